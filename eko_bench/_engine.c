/* The bench's per-packet media work in C: the compiled twin of eko_bench/rtp_engine.py's
 * PythonMediaCore and of MediaLoop's plain-RTP send and receive (no SRTP, no RFC 4733
 * events: those calls take the Python path, one call at a time).
 *
 * Why: the bench must drive more calls than the server takes. At 2500 calls its media
 * process sends and receives 125 000 datagrams a second each way on one CPU, and in
 * Python the work around each system call kept that CPU saturated, its frames late
 * (docs/BENCHMARKS.md, fourteenth session). Here a frame is one copy of 160 octets,
 * the header's sequence and timestamp, and one sendto(2); a received datagram is one
 * recvmsg(2) with its kernel time stamp and four appends to the call's records.
 *
 * The rules are rtp_engine.py's, read there: the frame schedule, the records, the
 * mux and version checks, what counts as sound. The GIL is held: every call here is
 * non-blocking. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define FRAME_BYTES 160
#define FRAME_NS 20000000LL
#define HEADER 12
#define RECEIVE_SIZE 2048

typedef struct {
    PyObject_HEAD
    PyObject *packet;             /* bytearray(12 + 160): the call's one outgoing packet */
    PyObject *remote_name;        /* the far end's socket address (mmsg.socket_address), else None */
    PyObject *srtp;               /* CallSrtp, else None */
    PyObject *event_payload_type; /* int, else None */
    PyObject *arrivals, *sequences, *timestamps, *sources, *onsets_ns, *sound; /* array.array records */
    PyObject *first_packet_ns, *first_sound_ns;                                 /* int, else None */
    long long due_ns;
    long long sent, send_errors, malformed, fallback_clock, rtcp_received;
    Py_ssize_t position;
    int fd;
    int payload_type;
    int sequence;
    uint32_t timestamp;
} Core;

static PyObject *str_append;

#define CORE_OBJECTS(X)                                                                                              \
    X(packet) X(remote_name) X(srtp) X(event_payload_type) X(arrivals) X(sequences) X(timestamps) X(sources)           \
    X(onsets_ns) X(sound) X(first_packet_ns) X(first_sound_ns)

#include "../eko_rtp/_core_type.h"

static PyObject *core_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    Core *self = (Core *)PyType_GenericNew(type, args, kwargs);
    if (self != NULL)
        self->fd = -1;
    return (PyObject *)self;
}

static PyMemberDef core_members[] = {
    {"packet", T_OBJECT, offsetof(Core, packet), 0, NULL},
    {"remote_name", T_OBJECT, offsetof(Core, remote_name), 0, NULL},
    {"srtp", T_OBJECT, offsetof(Core, srtp), 0, NULL},
    {"event_payload_type", T_OBJECT, offsetof(Core, event_payload_type), 0, NULL},
    {"arrivals", T_OBJECT, offsetof(Core, arrivals), 0, NULL},
    {"sequences", T_OBJECT, offsetof(Core, sequences), 0, NULL},
    {"timestamps", T_OBJECT, offsetof(Core, timestamps), 0, NULL},
    {"sources", T_OBJECT, offsetof(Core, sources), 0, NULL},
    {"onsets_ns", T_OBJECT, offsetof(Core, onsets_ns), 0, NULL},
    {"sound", T_OBJECT, offsetof(Core, sound), 0, NULL},
    {"first_packet_ns", T_OBJECT, offsetof(Core, first_packet_ns), 0, NULL},
    {"first_sound_ns", T_OBJECT, offsetof(Core, first_sound_ns), 0, NULL},
    {"due_ns", T_LONGLONG, offsetof(Core, due_ns), 0, NULL},
    {"sent", T_LONGLONG, offsetof(Core, sent), 0, NULL},
    {"send_errors", T_LONGLONG, offsetof(Core, send_errors), 0, NULL},
    {"malformed", T_LONGLONG, offsetof(Core, malformed), 0, NULL},
    {"fallback_clock", T_LONGLONG, offsetof(Core, fallback_clock), 0, NULL},
    {"rtcp_received", T_LONGLONG, offsetof(Core, rtcp_received), 0, NULL},
    {"position", T_PYSSIZET, offsetof(Core, position), 0, NULL},
    {"fd", T_INT, offsetof(Core, fd), 0, NULL},
    {"payload_type", T_INT, offsetof(Core, payload_type), 0, NULL},
    {"sequence", T_INT, offsetof(Core, sequence), 0, NULL},
    {"timestamp", T_UINT, offsetof(Core, timestamp), 0, NULL},
    {NULL},
};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "eko_bench._engine.MediaCore",
    .tp_doc = "What the per-packet paths read of one bench call: the compiled twin of rtp_engine.PythonMediaCore.",
    CORE_TYPE_SLOTS,
    .tp_members = core_members,
};

static int append(PyObject *records, PyObject *value)
{
    if (value == NULL)
        return -1;
    PyObject *result = PyObject_CallMethodOneArg(records, str_append, value);
    Py_DECREF(value);
    if (result == NULL)
        return -1;
    Py_DECREF(result);
    return 0;
}

/* A record a path appends to: RuntimeError when the call never set it. */
static int missing(PyObject *value, const char *name)
{
    if (value != NULL)
        return 0;
    PyErr_Format(PyExc_RuntimeError, "the call's %s is not set", name);
    return 1;
}

static long long wall_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
}

/* send_slot(slot, audio, frames, loop_start, onsets, fallback): each call of the slot
 * sends its next frame; a call with SRTP or events goes to fallback(call). */
static PyObject *send_slot(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "send_slot(slot, audio, frames, loop_start, onsets, fallback)");
        return NULL;
    }
    PyObject *slot = args[0], *audio = args[1], *fallback = args[5];
    Py_ssize_t frames = PyLong_AsSsize_t(args[2]), loop_start = PyLong_AsSsize_t(args[3]);
    if ((frames == -1 || loop_start == -1) && PyErr_Occurred())
        return NULL;
    if (!PyList_Check(slot) || !PyDict_Check(audio) || !PyBytes_Check(args[4]) ||
        PyBytes_GET_SIZE(args[4]) < frames) {
        PyErr_SetString(PyExc_TypeError, "send_slot needs a list, a dict of bytes and the onsets' bytes");
        return NULL;
    }
    const char *onsets = PyBytes_AS_STRING(args[4]);
    PyObject *cached_type = NULL, *cached_audio = NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(slot); i++) {
        PyObject *item = PyList_GET_ITEM(slot, i);
        if (!PyObject_TypeCheck(item, &CoreType)) {
            PyErr_SetString(PyExc_TypeError, "a slot holds the calls' MediaCore objects");
            return NULL;
        }
        Core *media = (Core *)item;
        if ((media->srtp && media->srtp != Py_None) ||
            (media->event_payload_type && media->event_payload_type != Py_None)) {
            PyObject *sent = PyObject_CallOneArg(fallback, item);
            if (sent == NULL)
                return NULL;
            Py_DECREF(sent);
            continue;
        }
        if (media->packet == NULL || !PyByteArray_Check(media->packet) ||
            PyByteArray_GET_SIZE(media->packet) != HEADER + FRAME_BYTES || media->remote_name == NULL ||
            !PyBytes_Check(media->remote_name)) {
            PyErr_SetString(PyExc_ValueError, "a sending call needs its packet and its far end's address");
            return NULL;
        }
        if (cached_audio == NULL || media->payload_type != PyLong_AsLong(cached_type)) {
            PyObject *key = PyLong_FromLong(media->payload_type);
            if (key == NULL)
                return NULL;
            cached_audio = PyDict_GetItemWithError(audio, key);
            Py_XSETREF(cached_type, key);
            if (cached_audio == NULL || !PyBytes_Check(cached_audio) ||
                PyBytes_GET_SIZE(cached_audio) < frames * FRAME_BYTES) {
                if (!PyErr_Occurred())
                    PyErr_Format(PyExc_KeyError, "no audio for payload type %d", media->payload_type);
                Py_DECREF(cached_type);
                return NULL;
            }
        }
        Py_ssize_t position = media->position;
        if (position < 0 || position >= frames)
            position = loop_start; /* cannot happen but for a bug: never read past the audio */
        unsigned char *packet = (unsigned char *)PyByteArray_AS_STRING(media->packet);
        memcpy(packet + HEADER, PyBytes_AS_STRING(cached_audio) + position * FRAME_BYTES, FRAME_BYTES);
        if (sendto(media->fd, packet, HEADER + FRAME_BYTES, 0, (struct sockaddr *)PyBytes_AS_STRING(media->remote_name),
                   (socklen_t)PyBytes_GET_SIZE(media->remote_name)) < 0)
            media->send_errors += 1;
        else
            media->sent += 1;
        if (onsets[position] && (missing(media->onsets_ns, "onsets_ns") ||
                                 append(media->onsets_ns, PyLong_FromLongLong(wall_ns())) < 0)) {
            Py_XDECREF(cached_type);
            return NULL;
        }
        position += 1;
        media->position = position == frames ? loop_start : position;
        media->sequence = (media->sequence + 1) & 0xFFFF;
        media->timestamp += FRAME_BYTES;
        /* RFC 3551 §4.1: the marker goes on the first packet of a talkspurt only. */
        packet[1] = (unsigned char)media->payload_type;
        packet[2] = (unsigned char)(media->sequence >> 8);
        packet[3] = (unsigned char)media->sequence;
        packet[4] = (unsigned char)(media->timestamp >> 24);
        packet[5] = (unsigned char)(media->timestamp >> 16);
        packet[6] = (unsigned char)(media->timestamp >> 8);
        packet[7] = (unsigned char)media->timestamp;
        media->due_ns += FRAME_NS;
    }
    Py_XDECREF(cached_type);
    Py_RETURN_NONE;
}

static int is_sound(const unsigned char *payload, Py_ssize_t size, int payload_type)
{
    /* rtp_engine._SILENCE_BYTES: a codec's zero codes; anything else is sound */
    unsigned char first = payload_type == 8 ? 0xD5 : 0xFF, second = payload_type == 8 ? 0x55 : 0x7F;
    for (Py_ssize_t i = 0; i < size; i++)
        if (payload[i] != first && payload[i] != second)
            return 1;
    return 0;
}

/* receive(call, classify): read the call's RTP socket until it is empty, recording
 * each packet as MediaLoop._receive does. Calls with SRTP take the Python path. */
static PyObject *receive(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyObject_TypeCheck(args[0], &CoreType)) {
        PyErr_SetString(PyExc_TypeError, "receive(call, classify)");
        return NULL;
    }
    Core *media = (Core *)args[0];
    int classify = PyObject_IsTrue(args[1]);
    if (classify < 0)
        return NULL;
    if (media->srtp && media->srtp != Py_None) {
        PyErr_SetString(PyExc_ValueError, "an SRTP call's packets are read by the Python path");
        return NULL;
    }
    if (missing(media->arrivals, "arrivals") || missing(media->sequences, "sequences") ||
        missing(media->timestamps, "timestamps") || missing(media->sources, "sources") ||
        (classify && missing(media->sound, "sound")))
        return NULL;
    unsigned char buffer[RECEIVE_SIZE];
    char control[CMSG_SPACE(sizeof(struct timespec))];
    for (;;) {
        struct iovec vector = {buffer, sizeof(buffer)};
        struct msghdr message = {0};
        message.msg_iov = &vector;
        message.msg_iovlen = 1;
        message.msg_control = control;
        message.msg_controllen = sizeof(control);
        ssize_t size = recvmsg(media->fd, &message, 0);
        if (size < 0)
            break; /* EAGAIN when drained; any other error ends this read as in Python */
        long long arrival = -1;
        for (struct cmsghdr *header = CMSG_FIRSTHDR(&message); header; header = CMSG_NXTHDR(&message, header)) {
            if (header->cmsg_level == SOL_SOCKET && header->cmsg_type == SO_TIMESTAMPNS) {
                struct timespec stamp;
                memcpy(&stamp, CMSG_DATA(header), sizeof(stamp));
                arrival = (long long)stamp.tv_sec * 1000000000LL + stamp.tv_nsec;
            }
        }
        if (arrival < 0) {
            arrival = wall_ns();
            media->fallback_clock += 1;
        }
        if (size < HEADER || buffer[0] >> 6 != 2) {
            media->malformed += 1;
            continue;
        }
        if (buffer[1] >= 192 && buffer[1] <= 223) { /* RFC 5761 §4: RTCP on the RTP port */
            media->rtcp_received += 1;
            continue;
        }
        uint32_t stamp = ((uint32_t)buffer[4] << 24) | ((uint32_t)buffer[5] << 16) | ((uint32_t)buffer[6] << 8) |
                         buffer[7];
        uint32_t source = ((uint32_t)buffer[8] << 24) | ((uint32_t)buffer[9] << 16) | ((uint32_t)buffer[10] << 8) |
                          buffer[11];
        if (append(media->arrivals, PyLong_FromLongLong(arrival)) < 0 ||
            append(media->sequences, PyLong_FromLong(((long)buffer[2] << 8) | buffer[3])) < 0 ||
            append(media->timestamps, PyLong_FromUnsignedLong(stamp)) < 0 ||
            append(media->sources, PyLong_FromUnsignedLong(source)) < 0)
            return NULL;
        int unsound = media->first_sound_ns == NULL || media->first_sound_ns == Py_None;
        if (classify || unsound) {
            if (media->first_packet_ns == NULL || media->first_packet_ns == Py_None) {
                PyObject *first = PyLong_FromLongLong(arrival);
                if (first == NULL)
                    return NULL;
                Py_XSETREF(media->first_packet_ns, first);
            }
            /* RFC 3550 §5.1: the payload follows 12 octets plus 4 per CSRC */
            Py_ssize_t start = HEADER + 4 * (buffer[0] & 0x0F);
            int sound = start < size && is_sound(buffer + start, size - start, buffer[1] & 0x7F);
            if (sound && unsound) {
                PyObject *first = PyLong_FromLongLong(arrival);
                if (first == NULL)
                    return NULL;
                Py_XSETREF(media->first_sound_ns, first);
            }
            if (classify && append(media->sound, PyLong_FromLong(sound)) < 0)
                return NULL;
        }
    }
    Py_RETURN_NONE;
}

static PyMethodDef engine_functions[] = {
    {"send_slot", (PyCFunction)(void (*)(void))send_slot, METH_FASTCALL,
     "send_slot(slot, audio, frames, loop_start, onsets, fallback): each call of the slot sends its next frame."},
    {"receive", (PyCFunction)(void (*)(void))receive, METH_FASTCALL,
     "receive(call, classify): read and record what waits on the call's RTP socket."},
    {NULL},
};

static struct PyModuleDef engine_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "eko_bench._engine",
    .m_doc = "The bench's per-packet media work, compiled (eko_bench/rtp_engine.py's twin).",
    .m_size = -1,
    .m_methods = engine_functions,
};

PyMODINIT_FUNC PyInit__engine(void)
{
    if (str_append == NULL && (str_append = PyUnicode_InternFromString("append")) == NULL)
        return NULL;
    return module_with_type(&engine_module, &CoreType, "MediaCore");
}
