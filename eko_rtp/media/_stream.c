/* One call's per-packet paths in C: the compiled twin of eko_rtp/media/stream.py's
 * PythonStreamCore, the base of MediaStream that holds what send_due() and on_rtp()
 * read, and both methods (tests/test_stream.py runs against both).
 *
 * Why: send_due() runs for every frame of every call, and in Python its loop, a
 * dozen attribute loads and the counter's increment were the largest share of a
 * busy server's Python after the kernel's (docs/BENCHMARKS.md, fourteenth session).
 * Here the loop, the due times and the common frame (a cached payload, no SRTP, no
 * recorder) are C; everything that is not per frame stays in stream.py and is only
 * called from here: the playout queue's next_frame(), SRTP's protect_frame(), the
 * recorder, and MediaStream._count_late() and _send_failed() (which decides what a
 * failed send counts as). A frame costs one call into the queue and one into the
 * socket's sendmsg (a compiled LegSender on a shared port), no Python frame of ours.
 *
 * The attributes keep the names and meaning of the Python twin's slots, so
 * stream.py reads and writes them alike. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <stdint.h>

#define FRAME_SECONDS 0.02
#define SAMPLES_PER_FRAME 160
#define LATE_THRESHOLD 0.002 /* stream.py's: a frame sent over 2 ms after its due time is late */
#define DUE_SLACK 1e-9

typedef struct {
    PyObject_HEAD
    PyObject *t0;         /* float once started, else None */
    Py_ssize_t frame_index;
    PyObject *queue;      /* PlayoutQueue */
    PyObject *sender;     /* RtpSender (either twin) */
    PyObject *sendmsg;    /* the RTP socket's (or leg's) sendmsg */
    PyObject *sendto;     /* ... and sendto, for SRTP's one buffer */
    PyObject *remote_rtp; /* where frames go, or None */
    PyObject *translate;  /* bytes.translate table for PCMA, else None */
    PyObject *srtp;       /* CallSrtp while the plan has keys, else None */
    PyObject *recorder;   /* CallRecorder, else None */
    PyObject *counters;   /* MediaCounters */
    PyObject *caller_source; /* the latched source (host, port), else None */
    PyObject *last_inbound;  /* when the caller was last heard (trio's clock), else None */
    PyObject *statistics;    /* ReceiverStatistics */
    PyObject *on_audio;      /* the call's ears, else None */
    PyObject *codec_name;    /* "PCMU" or "PCMA" */
    int audio_pt;
    int telephone_event_pt;  /* -1: none negotiated */
    uint32_t caller_ssrc;
    char has_caller_ssrc;
    char rtcp_mux;
    char sending;
    char closed;
} Core;

static PyObject *str_next_frame, *str_header_for_next_frame, *str_protect_frame, *str_bot_frame, *str_skip,
    *str_frames_sent, *str_count_late, *str_send_failed, *str_translate, *empty_tuple, *zero, *one,
    *samples_per_frame, *str_packets_received, *str_packets_invalid, *str_on_rtcp, *str_admit, *str_feed,
    *str_on_telephone_event, *str_unprotect_view;

/* The object members, named once for the collector's visit and clear. */
#define CORE_OBJECTS(X)                                                                                              \
    X(t0) X(queue) X(sender) X(sendmsg) X(sendto) X(remote_rtp) X(translate) X(srtp) X(recorder) X(counters)          \
    X(caller_source) X(last_inbound) X(statistics) X(on_audio) X(codec_name)

#include "../_core_type.h"

static inline PyObject *or_none(PyObject *value)
{
    return value != NULL ? value : Py_None;
}

/* counters.<name> += 1 */
static int count(PyObject *counters, PyObject *name)
{
    PyObject *value = PyObject_GetAttr(counters, name);
    if (value == NULL)
        return -1;
    PyObject *more = PyNumber_Add(value, one);
    Py_DECREF(value);
    if (more == NULL)
        return -1;
    int result = PyObject_SetAttr(counters, name, more);
    Py_DECREF(more);
    return result;
}

/* One frame to the caller: its payload and marker from the queue, out through the
 * socket. 0, or -1 with an exception (what send_due's Python twin would raise). */
/* A member a path needs: RuntimeError when a subclass never set it. */
static int missing(PyObject *value, const char *name)
{
    if (value != NULL)
        return 0;
    PyErr_Format(PyExc_RuntimeError, "the stream's %s is not set", name);
    return 1;
}

/* One frame to the caller: its payload and marker from the queue, out through the
 * socket. 0, or -1 with an exception (what send_due's Python twin would raise).
 * What it calls may replace the stream's members (a re-INVITE's plan, a rekey): it
 * holds its own references to those it uses. */
static int send_one(Core *self)
{
    if (missing(self->queue, "queue") || missing(self->sender, "sender") || missing(self->counters, "counters") ||
        (is_none(self->srtp) ? missing(self->sendmsg, "_sendmsg") : missing(self->sendto, "_sendto")))
        return -1;
    PyObject *queue = Py_NewRef(self->queue), *sender = Py_NewRef(self->sender);
    PyObject *srtp = is_none(self->srtp) ? NULL : Py_NewRef(self->srtp);
    PyObject *send = Py_NewRef(srtp == NULL ? self->sendmsg : self->sendto);
    PyObject *address = Py_NewRef(or_none(self->remote_rtp));
    PyObject *translate = is_none(self->translate) ? NULL : Py_NewRef(self->translate);
    PyObject *payload = NULL, *sent = NULL;
    int result = -1;
    PyObject *frame = PyObject_CallMethodNoArgs(queue, str_next_frame);
    if (frame == NULL)
        goto done;
    if (!PyTuple_Check(frame) || PyTuple_GET_SIZE(frame) != 2) {
        PyErr_SetString(PyExc_TypeError, "next_frame() must return (payload, marker)");
        goto done;
    }
    payload = Py_NewRef(PyTuple_GET_ITEM(frame, 0));
    PyObject *marker = PyTuple_GET_ITEM(frame, 1); /* the frame tuple keeps it */
    if (translate != NULL) { /* PCMA: one 160-byte translate of the cached PCMU */
        PyObject *raw = PyBytes_FromObject(payload);
        Py_SETREF(payload, raw == NULL ? NULL : PyObject_CallMethodOneArg(raw, str_translate, translate));
        Py_XDECREF(raw);
        if (payload == NULL)
            goto done;
    }
    PyObject *header = PyObject_CallMethodOneArg(sender, str_header_for_next_frame, marker);
    if (header == NULL)
        goto done;
    if (srtp == NULL) {
        PyObject *buffers = PyTuple_Pack(2, header, payload);
        Py_DECREF(header);
        if (buffers == NULL)
            goto done;
        PyObject *arguments[4] = {buffers, empty_tuple, zero, address};
        sent = PyObject_Vectorcall(send, arguments, 4, NULL);
        Py_DECREF(buffers);
    } else { /* the cipher's one copy into the context's buffer; its view goes out as is */
        PyObject *arguments[3] = {srtp, header, payload};
        PyObject *protected = PyObject_VectorcallMethod(str_protect_frame, arguments,
                                                        3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        Py_DECREF(header);
        if (protected != NULL) {
            PyObject *to[2] = {protected, address};
            sent = PyObject_Vectorcall(send, to, 2, NULL);
            Py_DECREF(protected);
        }
    }
    if (sent != NULL) {
        Py_DECREF(sent);
        if (missing(self->counters, "counters") || count(self->counters, str_frames_sent) < 0)
            goto done;
    } else if (PyErr_ExceptionMatches(PyExc_Exception)) {
        /* stream.py decides what it counts as (a full buffer, a refused send, an SRTP
         * failure) and re-raises anything else */
        PyObject *type, *error, *traceback;
        PyErr_Fetch(&type, &error, &traceback);
        PyErr_NormalizeException(&type, &error, &traceback);
        if (traceback != NULL)
            PyException_SetTraceback(error, traceback);
        Py_XDECREF(type);
        Py_XDECREF(traceback);
        PyObject *handled = PyObject_CallMethodOneArg((PyObject *)self, str_send_failed, error);
        Py_DECREF(error);
        if (handled == NULL)
            goto done;
        Py_DECREF(handled);
    } else {
        goto done; /* cancellation and the like: up */
    }
    if (!is_none(self->recorder)) {
        PyObject *recorder = Py_NewRef(self->recorder);
        PyObject *recorded = PyObject_CallMethodOneArg(recorder, str_bot_frame, payload);
        Py_DECREF(recorder);
        if (recorded == NULL)
            goto done;
        Py_DECREF(recorded);
    }
    result = 0;
done:
    Py_XDECREF(payload);
    Py_XDECREF(frame);
    Py_DECREF(queue);
    Py_DECREF(sender);
    Py_XDECREF(srtp);
    Py_DECREF(send);
    Py_DECREF(address);
    Py_XDECREF(translate);
    return result;
}

static PyObject *core_send_due(Core *self, PyObject *now_object)
{
    if (self->closed)
        Py_RETURN_NONE;
    double now = PyFloat_AsDouble(now_object);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    if (is_none(self->t0)) {
        PyErr_SetString(PyExc_RuntimeError, "send_due() before start(): the stream has no schedule");
        return NULL;
    }
    double t0 = PyFloat_AsDouble(self->t0);
    if (t0 == -1.0 && PyErr_Occurred())
        return NULL;
    Py_ssize_t index = self->frame_index;
    double due = t0 + index * FRAME_SECONDS;
    int failed = 0;
    while (due <= now + DUE_SLACK) {
        if (now - due > LATE_THRESHOLD) {
            PyObject *lateness = PyFloat_FromDouble(now - due);
            PyObject *counted = lateness ? PyObject_CallMethodOneArg((PyObject *)self, str_count_late, lateness) : NULL;
            Py_XDECREF(lateness);
            if (counted == NULL) {
                failed = 1;
                break;
            }
            Py_DECREF(counted);
        }
        if (self->sending) {
            if (send_one(self) < 0) {
                failed = 1;
                break;
            }
        } else { /* held: timestamps keep counting time */
            if (missing(self->sender, "sender")) {
                failed = 1;
                break;
            }
            PyObject *sender = Py_NewRef(self->sender);
            PyObject *skipped = PyObject_CallMethodOneArg(sender, str_skip, samples_per_frame);
            Py_DECREF(sender);
            if (skipped == NULL) {
                failed = 1;
                break;
            }
            Py_DECREF(skipped);
        }
        index += 1;
        due = t0 + index * FRAME_SECONDS;
    }
    self->frame_index = index;
    if (failed)
        return NULL;
    return PyFloat_FromDouble(due);
}


/* -- receiving --------------------------------------------------------------------- */

/* statistics.feed(sequence, timestamp, arrival) */
static int feed(Core *self, PyObject *sequence, PyObject *timestamp, PyObject *arrival)
{
    if (missing(self->statistics, "statistics"))
        return -1;
    PyObject *statistics = Py_NewRef(self->statistics);
    PyObject *arguments[4] = {statistics, sequence, timestamp, arrival};
    PyObject *accepted = PyObject_VectorcallMethod(str_feed, arguments, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(statistics);
    if (accepted == NULL)
        return -1;
    Py_DECREF(accepted);
    return 0;
}

static int hear(Core *self, PyObject *sequence, PyObject *datagram, PyObject *now)
{
    if (is_none(self->on_audio))
        return 0;
    /* the ears may detach themselves (or the codec change) while they hear this */
    PyObject *on_audio = Py_NewRef(self->on_audio), *codec = Py_NewRef(or_none(self->codec_name));
    PyObject *arguments[4] = {sequence, datagram, codec, now};
    PyObject *heard = PyObject_Vectorcall(on_audio, arguments, 4, NULL);
    Py_DECREF(on_audio);
    Py_DECREF(codec);
    if (heard == NULL)
        return -1;
    Py_DECREF(heard);
    return 0;
}

/* The caller's packet whose fixed header was read: latched source, counters,
 * statistics, telephone-events and the ears, as the Python twin's on_rtp. */
static PyObject *take_packet(Core *self, PyObject *data, PyObject *address, PyObject *now, PyObject *arrival,
                             const unsigned char *header)
{
    uint32_t ssrc = ((uint32_t)header[8] << 24) | ((uint32_t)header[9] << 16) | ((uint32_t)header[10] << 8) |
                    header[11];
    /* The one per-packet check: the caller's source; anything else goes to the latch. */
    PyObject *source = Py_NewRef(or_none(self->caller_source));
    int same = address == source ? 1 : PyObject_RichCompareBool(address, source, Py_EQ);
    Py_DECREF(source);
    if (same < 0)
        return NULL;
    if (!same) {
        PyObject *ssrc_object = PyLong_FromUnsignedLong(ssrc);
        if (ssrc_object == NULL)
            return NULL;
        PyObject *arguments[4] = {(PyObject *)self, address, ssrc_object, now};
        PyObject *admitted = PyObject_VectorcallMethod(str_admit, arguments, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                                       NULL);
        Py_DECREF(ssrc_object);
        if (admitted == NULL)
            return NULL;
        int yes = PyObject_IsTrue(admitted);
        Py_DECREF(admitted);
        if (yes <= 0)
            return yes < 0 ? NULL : Py_NewRef(Py_None);
    }
    if (missing(self->counters, "counters") || count(self->counters, str_packets_received) < 0)
        return NULL;
    Py_INCREF(now);
    Py_XSETREF(self->last_inbound, now);
    self->caller_ssrc = ssrc;
    self->has_caller_ssrc = 1;
    int payload_type = header[1] & 0x7F;
    PyObject *sequence = PyLong_FromLong(((long)header[2] << 8) | header[3]);
    PyObject *timestamp = PyLong_FromUnsignedLong(((uint32_t)header[4] << 24) | ((uint32_t)header[5] << 16) |
                                                  ((uint32_t)header[6] << 8) | header[7]);
    PyObject *result = NULL;
    if (sequence == NULL || timestamp == NULL)
        goto done;
    if (payload_type == self->telephone_event_pt) {
        if (feed(self, sequence, timestamp, Py_None) < 0) /* counted for loss, not jitter */
            goto done;
        PyObject *arguments[3] = {(PyObject *)self, data, timestamp};
        PyObject *done_event = PyObject_VectorcallMethod(str_on_telephone_event, arguments,
                                                         3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        if (done_event == NULL)
            goto done;
        Py_DECREF(done_event);
        /* It takes its sequence number in the caller's stream (RFC 4733 §2.1). */
        if (hear(self, sequence, Py_None, now) < 0)
            goto done;
        result = Py_NewRef(Py_None);
        goto done;
    }
    if (feed(self, sequence, timestamp, arrival) < 0)
        goto done;
    if (hear(self, sequence, payload_type == self->audio_pt ? data : Py_None, now) < 0)
        goto done;
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(sequence);
    Py_XDECREF(timestamp);
    return result;
}

/* on_rtp(data, address, now, arrival): a datagram on the RTP port (the hub's handler). */
static PyObject *core_on_rtp(Core *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "on_rtp(data, address, now, arrival) takes 4 arguments, not %zd", nargs);
        return NULL;
    }
    PyObject *data = args[0], *address = args[1], *now = args[2], *arrival = args[3];
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *bytes = view.buf;
    if (self->rtcp_mux && view.len >= 2 && bytes[1] >= 192 && bytes[1] <= 223) { /* RFC 5761 §4 */
        PyBuffer_Release(&view);
        PyObject *arguments[5] = {(PyObject *)self, data, address, now, arrival};
        return PyObject_VectorcallMethod(str_on_rtcp, arguments, 5 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    PyObject *plain = NULL;
    if (!is_none(self->srtp)) {
        /* Before anything reads it: only an authenticated, fresh packet goes on. */
        PyBuffer_Release(&view);
        if (self->closed)
            Py_RETURN_NONE; /* the contexts are freed */
        PyObject *srtp = Py_NewRef(self->srtp);
        PyObject *arguments[2] = {srtp, data};
        plain = PyObject_VectorcallMethod(str_unprotect_view, arguments, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        Py_DECREF(srtp);
        if (plain == NULL)
            return NULL;
        if (plain == Py_None)
            return plain; /* counted by reason in the call's CallSrtp and the server's SrtpCounters */
        data = plain;
        if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
            Py_DECREF(plain);
            return NULL;
        }
        bytes = view.buf;
    }
    PyObject *result;
    if (view.len < 12 || bytes[0] >> 6 != 2) /* rtp.peek_rtp_untrusted's two checks */
        result = missing(self->counters, "counters") || count(self->counters, str_packets_invalid) < 0
                     ? NULL : Py_NewRef(Py_None);
    else
        result = take_packet(self, data, address, now, arrival, bytes);
    PyBuffer_Release(&view);
    Py_XDECREF(plain);
    return result;
}

static PyObject *core_caller_ssrc(Core *self, void *closure)
{
    if (!self->has_caller_ssrc)
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLong(self->caller_ssrc);
}

static int core_set_caller_ssrc(Core *self, PyObject *value, void *closure)
{
    if (value == NULL || value == Py_None) {
        self->has_caller_ssrc = 0;
        return 0;
    }
    unsigned long ssrc = PyLong_AsUnsignedLong(value);
    if (ssrc == (unsigned long)-1 && PyErr_Occurred())
        return -1;
    if (ssrc > 0xFFFFFFFFUL) {
        PyErr_Format(PyExc_ValueError, "an SSRC is 32 bits, not %R", value);
        return -1;
    }
    self->caller_ssrc = (uint32_t)ssrc;
    self->has_caller_ssrc = 1;
    return 0;
}

static PyObject *core_telephone_event_pt(Core *self, void *closure)
{
    if (self->telephone_event_pt < 0)
        Py_RETURN_NONE;
    return PyLong_FromLong(self->telephone_event_pt);
}

static int core_set_telephone_event_pt(Core *self, PyObject *value, void *closure)
{
    if (value == NULL || value == Py_None) {
        self->telephone_event_pt = -1;
        return 0;
    }
    long payload_type = PyLong_AsLong(value);
    if (payload_type == -1 && PyErr_Occurred())
        return -1;
    if (payload_type < 0 || payload_type > 127) {
        PyErr_Format(PyExc_ValueError, "payload type must be 0..127, not %R", value);
        return -1;
    }
    self->telephone_event_pt = (int)payload_type;
    return 0;
}

static PyGetSetDef core_getset[] = {
    {"caller_ssrc", (getter)core_caller_ssrc, (setter)core_set_caller_ssrc,
     "the SSRC of the caller's last packet, None before one", NULL},
    {"telephone_event_pt", (getter)core_telephone_event_pt, (setter)core_set_telephone_event_pt,
     "the negotiated telephone-event payload type, None without", NULL},
    {NULL},
};

static PyObject *core_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    Core *self = (Core *)PyType_GenericNew(type, args, kwargs);
    if (self != NULL)
        self->telephone_event_pt = -1; /* none until a plan says (0 is PCMU's) */
    return (PyObject *)self;
}

static PyMethodDef core_methods[] = {
    {"send_due", (PyCFunction)core_send_due, METH_O,
     "Send every frame due at now; the next due time, or None once closed."},
    {"on_rtp", (PyCFunction)(void (*)(void))core_on_rtp, METH_FASTCALL,
     "A datagram on the RTP port (the hub's handler): arrival is the kernel's time, None when not read."},
    {NULL},
};

static PyMemberDef core_members[] = {
    {"t0", T_OBJECT, offsetof(Core, t0), 0, "when frame 0 was due (trio's clock), None before start()"},
    {"frame_index", T_PYSSIZET, offsetof(Core, frame_index), 0, "the next frame's number"},
    {"queue", T_OBJECT, offsetof(Core, queue), 0, "the PlayoutQueue frames come from"},
    {"sender", T_OBJECT, offsetof(Core, sender), 0, "the RtpSender writing our headers"},
    {"_sendmsg", T_OBJECT, offsetof(Core, sendmsg), 0, NULL},
    {"_sendto", T_OBJECT, offsetof(Core, sendto), 0, NULL},
    {"remote_rtp", T_OBJECT, offsetof(Core, remote_rtp), 0, "where our frames go"},
    {"_translate", T_OBJECT, offsetof(Core, translate), 0, NULL},
    {"srtp", T_OBJECT, offsetof(Core, srtp), 0, "the call's SRTP contexts while the plan has keys"},
    {"recorder", T_OBJECT, offsetof(Core, recorder), 0, "the call's recorder, or None"},
    {"counters", T_OBJECT, offsetof(Core, counters), 0, "the server's MediaCounters"},
    {"sending", T_BOOL, offsetof(Core, sending), 0, "whether frames go out (not on hold, allowed to)"},
    {"closed", T_BOOL, offsetof(Core, closed), 0, "the call ended: nothing is sent"},
    {"caller_source", T_OBJECT, offsetof(Core, caller_source), 0, "the latched source, for the per-packet compare"},
    {"last_inbound", T_OBJECT, offsetof(Core, last_inbound), 0, "when the caller was last heard, None before"},
    {"statistics", T_OBJECT, offsetof(Core, statistics), 0, "the caller's stream's ReceiverStatistics"},
    {"on_audio", T_OBJECT, offsetof(Core, on_audio), 0, "the call's ears, or None"},
    {"codec_name", T_OBJECT, offsetof(Core, codec_name), 0, "the negotiated codec's name, upper case"},
    {"audio_pt", T_INT, offsetof(Core, audio_pt), 0, "the negotiated audio payload type"},
    {"_rtcp_mux", T_BOOL, offsetof(Core, rtcp_mux), 0, NULL},
    {NULL},
};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "eko_rtp.media._stream.StreamCore",
    .tp_doc = "What MediaStream's frame loop reads, and the loop: the compiled twin of stream.PythonStreamCore.",
    CORE_TYPE_SLOTS,
    .tp_methods = core_methods,
    .tp_members = core_members,
    .tp_getset = core_getset,
};

static struct PyModuleDef stream_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "eko_rtp.media._stream",
    .m_doc = "Compiled frame pacing of one call (eko_rtp/media/stream.py's twin).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__stream(void)
{
    if (str_next_frame == NULL) {
        static const CoreName names[] = {
            {&str_next_frame, "next_frame"}, {&str_header_for_next_frame, "header_for_next_frame"},
            {&str_protect_frame, "protect_frame"}, {&str_bot_frame, "bot_frame"}, {&str_skip, "skip"},
            {&str_frames_sent, "frames_sent"}, {&str_count_late, "_count_late"}, {&str_send_failed, "_send_failed"},
            {&str_translate, "translate"}, {&str_packets_received, "packets_received"},
            {&str_packets_invalid, "packets_invalid"}, {&str_on_rtcp, "on_rtcp"}, {&str_admit, "_admit"},
            {&str_feed, "feed"}, {&str_on_telephone_event, "_on_telephone_event"},
            {&str_unprotect_view, "unprotect_view"},
        };
        if (intern_names(names, sizeof(names) / sizeof(names[0])) < 0)
            return NULL;
        empty_tuple = PyTuple_New(0);
        zero = PyLong_FromLong(0);
        one = PyLong_FromLong(1);
        samples_per_frame = PyLong_FromLong(SAMPLES_PER_FRAME);
        if (!empty_tuple || !zero || !one || !samples_per_frame)
            return NULL;
    }
    return module_with_type(&stream_module, &CoreType, "StreamCore");
}
