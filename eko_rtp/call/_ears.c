/* One call's ears, per packet, in C: the compiled twin of eko_rtp/call/ears.py's
 * PythonEarsCore, the base of CallerAudio that holds what feed() and _hear() read,
 * and both methods (tests/test_ears.py runs against both).
 *
 * Why: with listening on, every inbound audio packet of every call goes through
 * feed() and _hear(); in Python those two frames and their attribute loads were most
 * of the listening path's cost once the detector itself was compiled
 * (docs/BENCHMARKS.md, eighteenth session). Here the checks, the payload's slice, the
 * frame times and the hand-out to the detector, the recognizer's batch, the audio_in
 * ring and the recorder are C. Everything else is called, not copied: the payload's
 * bounds are rtp.payload_bounds_untrusted (bound in by ears.py), the order is the
 * call's ReorderBuffer, the voice activity its detector (itself compiled in
 * media/_vad.c when built), and what is not per packet stays in ears.py: a codec
 * change (_switch_codec), speech events (_speech), a full batch (_send_batch), a gap
 * to wait out (_watch_gap).
 *
 * The attributes keep the names and meaning of the Python twin's slots, so ears.py
 * reads and writes them alike. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#define FRAME_SECONDS 0.02

static PyObject *payload_bounds, *rtp_error, *no_audio;
static Py_ssize_t frames_kept = -1, batch_bytes = -1;
static PyObject *str_wants, *str_switch_codec, *str_push, *str_held, *str_watch_gap, *str_feed, *str_speech,
    *str_send_batch, *str_popleft, *str_append, *str_set, *str_caller_frame;

typedef struct {
    PyObject_HEAD
    PyObject *vad;         /* the VoiceActivityDetector, or None */
    PyObject *vad_wanted;  /* who says whether the VAD is wanted (wants_voice_activity), or None: always */
    PyObject *recorder;    /* the call's recorder, or None */
    PyObject *codec;       /* "PCMU" or "PCMA" */
    PyObject *reorder;     /* the ReorderBuffer */
    PyObject *ring;        /* audio_in's deque, or None */
    PyObject *ring_ready;  /* the event its reader waits on, or None */
    PyObject *asr;         /* where recognizer batches go, or None */
    PyObject *asr_batch;   /* the bytearray being filled */
    Py_ssize_t frames, packets_invalid, frames_dropped;
    double last_frame_time;
    char closed, gap_watched, idle;
} Core;

#define CORE_OBJECTS(X) \
    X(vad) X(vad_wanted) X(recorder) X(codec) X(reorder) X(ring) X(ring_ready) X(asr) X(asr_batch)

#include "../_core_type.h"

static PyObject *core_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    Core *self = (Core *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
#define NONE(name) self->name = Py_NewRef(Py_None);
    CORE_OBJECTS(NONE)
#undef NONE
    self->last_frame_time = -1.0;
    return (PyObject *)self;
}

/* Call a method of ours (or of one of our objects) and drop what it returns: 0, or -1 raised. */
static int call_dropping(PyObject *const *args, size_t nargs, PyObject *name)
{
    PyObject *result = PyObject_VectorcallMethod(name, args, nargs | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (result == NULL)
        return -1;
    Py_DECREF(result);
    return 0;
}

/* The frames, in order, to the detector, the recognizer's batch, the ring and the recorder. */
static int hear(Core *self, PyObject *frames, double now, PyObject *vad)
{
    PyObject *sequence = PySequence_Fast(frames, "the frames heard must be a sequence");
    if (sequence == NULL)
        return -1;
    int result = -1;
    /* Python's locals: what the loop started with (the asr one is refreshed after a batch). */
    PyObject *asr = Py_XNewRef(self->asr), *ring = Py_XNewRef(self->ring), *recorder = Py_XNewRef(self->recorder);
    Py_ssize_t count = PySequence_Fast_GET_SIZE(sequence);
    for (Py_ssize_t index = 0; index < count; index++) {
        PyObject *frame = PySequence_Fast_GET_ITEM(sequence, index);
        self->frames += 1;
        /* The frame's start: frames released together came one period apart. */
        double at = now - (double)(count - index) * FRAME_SECONDS;
        double after_last = self->last_frame_time + FRAME_SECONDS;
        if (after_last > at)
            at = after_last;
        self->last_frame_time = at;
        if (!is_none(vad)) {
            PyObject *at_object = PyFloat_FromDouble(at);
            if (at_object == NULL)
                goto done;
            PyObject *codec = Py_NewRef(self->codec == NULL ? Py_None : self->codec);
            PyObject *args[4] = {vad, frame, codec, at_object};
            PyObject *event = PyObject_VectorcallMethod(str_feed, args, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
            Py_DECREF(codec);
            Py_DECREF(at_object);
            if (event == NULL)
                goto done;
            if (event != Py_None) {
                PyObject *speech_args[2] = {(PyObject *)self, event};
                int failed = call_dropping(speech_args, 2, str_speech);
                Py_DECREF(event);
                if (failed)
                    goto done;
            } else {
                Py_DECREF(event);
            }
        }
        if (!is_none(asr)) {
            PyObject *batch = self->asr_batch;
            if (batch == NULL || !PyByteArray_Check(batch)) {
                PyErr_SetString(PyExc_RuntimeError, "the ears' recognizer batch is not a bytearray");
                goto done;
            }
            Py_INCREF(batch);
            PyObject *grown = PySequence_InPlaceConcat(batch, frame);
            Py_DECREF(batch);
            if (grown == NULL)
                goto done;
            Py_ssize_t size = PyByteArray_GET_SIZE(grown);
            Py_DECREF(grown);
            if (size >= batch_bytes) {
                PyObject *self_arg[1] = {(PyObject *)self};
                if (call_dropping(self_arg, 1, str_send_batch) < 0)
                    goto done;
                Py_XSETREF(asr, Py_XNewRef(self->asr));
            }
        }
        if (!is_none(ring)) {
            Py_ssize_t held = PyObject_Length(ring);
            if (held < 0)
                goto done;
            if (held >= frames_kept) {
                PyObject *ring_arg[1] = {ring};
                if (call_dropping(ring_arg, 1, str_popleft) < 0)
                    goto done;
                self->frames_dropped += 1;
            }
            PyObject *copy = PyBytes_FromObject(frame);
            if (copy == NULL)
                goto done;
            PyObject *append_args[2] = {ring, copy};
            int failed = call_dropping(append_args, 2, str_append);
            Py_DECREF(copy);
            if (failed)
                goto done;
        }
        if (!is_none(recorder)) {
            PyObject *recorder_args[2] = {recorder, frame};
            if (call_dropping(recorder_args, 2, str_caller_frame) < 0)
                goto done;
        }
    }
    if (!is_none(ring) && !is_none(self->ring_ready)) {
        PyObject *ready[1] = {self->ring_ready};
        Py_INCREF(ready[0]);
        int failed = call_dropping(ready, 1, str_set);
        Py_DECREF(ready[0]);
        if (failed)
            goto done;
    }
    result = 0;
done:
    Py_XDECREF(asr);
    Py_XDECREF(ring);
    Py_XDECREF(recorder);
    Py_DECREF(sequence);
    return result;
}

static int bound(void)
{
    if (payload_bounds == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "eko_rtp.call._ears is not bound to ears.py's helpers");
        return 0;
    }
    return 1;
}

/* The payload of an audio datagram (a new reference), NULL with nothing raised when its
 * bounds made no sense (counted), NULL with an exception otherwise. */
static PyObject *payload_of(Core *self, PyObject *datagram)
{
    PyObject *bounds = PyObject_CallOneArg(payload_bounds, datagram);
    if (bounds == NULL) {
        if (PyErr_ExceptionMatches(rtp_error)) {
            PyErr_Clear();
            self->packets_invalid += 1;
        }
        return NULL;
    }
    Py_ssize_t start, end;
    if (!PyTuple_Check(bounds) || PyTuple_GET_SIZE(bounds) != 2) {
        Py_DECREF(bounds);
        PyErr_SetString(PyExc_TypeError, "payload bounds must be a (start, end) tuple");
        return NULL;
    }
    start = PyNumber_AsSsize_t(PyTuple_GET_ITEM(bounds, 0), PyExc_OverflowError);
    end = PyNumber_AsSsize_t(PyTuple_GET_ITEM(bounds, 1), PyExc_OverflowError);
    Py_DECREF(bounds);
    if ((start == -1 || end == -1) && PyErr_Occurred())
        return NULL;
    return PySequence_GetSlice(datagram, start, end);
}

static PyObject *core_feed(Core *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "feed() takes the sequence number, the datagram, the codec and now");
        return NULL;
    }
    if (!bound())
        return NULL;
    if (self->closed)
        Py_RETURN_NONE;
    PyObject *sequence = args[0], *datagram = args[1], *codec = args[2];
    double now = PyFloat_AsDouble(args[3]);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    PyObject *vad = is_none(self->vad) ? NULL : Py_NewRef(self->vad);
    PyObject *payload = NULL, *reorder = NULL, *frames = NULL, *result = NULL;
    if (vad != NULL && !is_none(self->vad_wanted)) {
        /* asked once a packet, as an attribute: a call per packet was a measurable share */
        PyObject *wanted = PyObject_GetAttr(self->vad_wanted, str_wants);
        if (wanted == NULL)
            goto done;
        int truth = PyObject_IsTrue(wanted);
        Py_DECREF(wanted);
        if (truth < 0)
            goto done;
        if (!truth)
            Py_CLEAR(vad);
    }
    if (vad == NULL && is_none(self->asr) && is_none(self->ring) && is_none(self->recorder)) {
        self->idle = 1;
        result = Py_NewRef(Py_None);
        goto done;
    }
    if (datagram == Py_None) {
        payload = Py_NewRef(no_audio);
    } else {
        payload = payload_of(self, datagram);  /* CSRCs, extension, padding */
        if (payload == NULL) {
            if (!PyErr_Occurred())
                result = Py_NewRef(Py_None);  /* counted in packets_invalid */
            goto done;
        }
    }
    int changed = 1;
    if (codec == self->codec)
        changed = 0;
    else if (self->codec != NULL && (changed = PyObject_RichCompareBool(codec, self->codec, Py_NE)) < 0)
        goto done;
    if (changed || self->idle) {
        self->idle = 0;
        PyObject *switch_args[2] = {(PyObject *)self, codec};
        if (call_dropping(switch_args, 2, str_switch_codec) < 0)
            goto done;
    }
    if (is_none(self->reorder)) {
        PyErr_SetString(PyExc_RuntimeError, "the ears have no reorder buffer");
        goto done;
    }
    reorder = Py_NewRef(self->reorder);
    PyObject *push_args[3] = {reorder, sequence, payload};
    frames = PyObject_VectorcallMethod(str_push, push_args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (frames == NULL)
        goto done;
    int any = PyObject_IsTrue(frames);
    if (any < 0 || (any && hear(self, frames, now, vad) < 0))
        goto done;
    PyObject *held = PyObject_GetAttr(reorder, str_held);
    if (held == NULL)
        goto done;
    int holding = PyObject_IsTrue(held);
    Py_DECREF(held);
    if (holding < 0)
        goto done;
    if (holding && !self->gap_watched) {
        PyObject *self_arg[1] = {(PyObject *)self};
        if (call_dropping(self_arg, 1, str_watch_gap) < 0)
            goto done;
    }
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(vad);
    Py_XDECREF(payload);
    Py_XDECREF(reorder);
    Py_XDECREF(frames);
    return result;
}

static PyObject *core_hear(Core *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "_hear() takes the frames, now and the detector (or None)");
        return NULL;
    }
    if (!bound())
        return NULL;
    double now = PyFloat_AsDouble(args[1]);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    if (hear(self, args[0], now, args[2] == Py_None ? NULL : args[2]) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef core_methods[] = {
    {"feed", (PyCFunction)(void (*)(void))core_feed, METH_FASTCALL,
     "feed(sequence, datagram, codec, now): one inbound RTP packet that arrived by now (None: no audio)."},
    {"_hear", (PyCFunction)(void (*)(void))core_hear, METH_FASTCALL,
     "_hear(frames, now, vad): frames in order to every reader."},
    {NULL},
};

static PyMemberDef core_members[] = {
    {"_vad", T_OBJECT, offsetof(Core, vad), 0, NULL},
    {"_vad_wanted", T_OBJECT, offsetof(Core, vad_wanted), 0, NULL},
    {"_recorder", T_OBJECT, offsetof(Core, recorder), 0, NULL},
    {"_codec", T_OBJECT, offsetof(Core, codec), 0, NULL},
    {"_reorder", T_OBJECT, offsetof(Core, reorder), 0, NULL},
    {"_ring", T_OBJECT, offsetof(Core, ring), 0, NULL},
    {"_ring_ready", T_OBJECT, offsetof(Core, ring_ready), 0, NULL},
    {"_asr", T_OBJECT, offsetof(Core, asr), 0, NULL},
    {"_asr_batch", T_OBJECT, offsetof(Core, asr_batch), 0, NULL},
    {"frames", T_PYSSIZET, offsetof(Core, frames), 0, "frames heard"},
    {"packets_invalid", T_PYSSIZET, offsetof(Core, packets_invalid), 0,
     "audio packets whose payload bounds made no sense"},
    {"frames_dropped", T_PYSSIZET, offsetof(Core, frames_dropped), 0, "audio_in frames a slow reader lost"},
    {"_last_frame_time", T_DOUBLE, offsetof(Core, last_frame_time), 0, NULL},
    {"closed", T_BOOL, offsetof(Core, closed), 0, "the call ended"},
    {"_gap_watched", T_BOOL, offsetof(Core, gap_watched), 0, NULL},
    {"_idle", T_BOOL, offsetof(Core, idle), 0, NULL},
    {NULL},
};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "eko_rtp.call._ears.EarsCore",
    .tp_doc = "What CallerAudio.feed reads, and feed and _hear: the compiled twin of ears.PythonEarsCore.",
    CORE_TYPE_SLOTS,
    .tp_methods = core_methods,
    .tp_members = core_members,
};

static PyObject *ears_bind(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyCallable_Check(args[0]) || !PyExceptionClass_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError,
                        "bind(payload_bounds_untrusted, RtpError, frames_kept, asr_batch_bytes, no_audio)");
        return NULL;
    }
    Py_ssize_t kept = PyNumber_AsSsize_t(args[2], PyExc_OverflowError);
    Py_ssize_t batch = PyNumber_AsSsize_t(args[3], PyExc_OverflowError);
    if ((kept == -1 || batch == -1) && PyErr_Occurred())
        return NULL;
    if (kept < 1 || batch < 1) {
        PyErr_SetString(PyExc_ValueError, "bind(): frames_kept and asr_batch_bytes must be positive");
        return NULL;
    }
    Py_XSETREF(payload_bounds, Py_NewRef(args[0]));
    Py_XSETREF(rtp_error, Py_NewRef(args[1]));
    Py_XSETREF(no_audio, Py_NewRef(args[4]));
    frames_kept = kept;
    batch_bytes = batch;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"bind", (PyCFunction)(void (*)(void))ears_bind, METH_FASTCALL,
     "bind(payload_bounds_untrusted, RtpError, frames_kept, asr_batch_bytes, no_audio): ears.py's helpers,"
     " sizes and the payload of a packet without audio."},
    {NULL},
};

static struct PyModuleDef ears_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "eko_rtp.call._ears",
    .m_doc = "Compiled per-packet hearing of one call (eko_rtp/call/ears.py's twin).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__ears(void)
{
    if (str_wants == NULL) {
        static const CoreName names[] = {
            {&str_wants, "wants_voice_activity"}, {&str_switch_codec, "_switch_codec"}, {&str_push, "push"},
            {&str_held, "held"}, {&str_watch_gap, "_watch_gap"}, {&str_feed, "feed"}, {&str_speech, "_speech"},
            {&str_send_batch, "_send_batch"}, {&str_popleft, "popleft"}, {&str_append, "append"},
            {&str_set, "set"}, {&str_caller_frame, "caller_frame"},
        };
        if (intern_names(names, sizeof(names) / sizeof(names[0])) < 0)
            return NULL;
    }
    return module_with_type(&ears_module, &CoreType, "EarsCore");
}
