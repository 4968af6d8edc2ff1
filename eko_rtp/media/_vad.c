/* One call's voice activity detector, per frame, in C: the compiled twin of
 * eko_rtp/media/vad.py's PythonVadCore, the base of VoiceActivityDetector that holds
 * what feed() reads and feed() itself (tests/test_vad.py runs against both).
 *
 * Why: with listening on, every inbound frame of every call the VAD is wanted for
 * goes through feed(); in Python its decoding, gate and state machine were the
 * largest share of the listening path after the classifier itself
 * (docs/BENCHMARKS.md, eighteenth session). Here the decoding into the classifier's
 * buffer, the start gate's energy, the warm-up and the state machine's moves are C;
 * the classifier is called as before (the WebRTC VAD's entry point, or any
 * classifier's is_speech), and what is not per frame stays in vad.py and is only
 * called from here: _first_frame() (makes the classifier and the buffer),
 * _missing() (frames that never came), _started() and _end() (the events).
 *
 * The G.711 tables and the state enum's members come from vad.py through bind(), so
 * the codec's decoding and the states are defined once. The attributes keep the
 * names and meaning of the Python twin's slots, so vad.py reads and writes them alike. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <math.h>
#include <stdint.h>

#define FRAME_BYTES 160
#define FRAME_SECONDS 0.02
#define SAMPLE_RATE 8000
#define MISSING_AFTER (1.4 * FRAME_SECONDS) /* vad.py's _MISSING_AFTER */

typedef struct {
    uint8_t linear_low[256];   /* each code's 16-bit linear sample, low byte */
    uint8_t linear_high[256];  /* ... high byte */
    uint32_t energy[256];      /* each code's squared sample, >> 8 and rounded */
} CodecTables;

static CodecTables pcmu, pcma;
static PyObject *quiet, *onset, *speaking, *trailing; /* VadState's members, once bound */
static PyObject *str_first_frame, *str_missing, *str_started, *str_end, *sample_rate, *samples_per_frame;

typedef struct {
    PyObject_HEAD
    PyObject *state;       /* a VadState member */
    Py_ssize_t frames;     /* frames fed */
    PyObject *is_speech;   /* the classifier's is_speech, None before the first frame */
    PyObject *process;     /* the WebRTC VAD's entry point, else None */
    PyObject *handle;      /* ... and its state */
    PyObject *pcm;         /* the classifier's bytearray, 2 * FRAME_BYTES, None before the first frame */
    PyObject *last_now;    /* the last frame's start, None before the first */
    long long threshold;   /* the start gate in scaled energy, -1: no gate */
    int start_frames, hangover_frames, warmup_frames;
    int run;
    double run_start, speech_start, last_voiced_end;
} Core;

#define CORE_OBJECTS(X) X(state) X(is_speech) X(process) X(handle) X(pcm) X(last_now)

#include "../_core_type.h"

static PyObject *core_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    Core *self = (Core *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
#define NONE(name) self->name = Py_NewRef(Py_None);
    CORE_OBJECTS(NONE)
#undef NONE
    self->threshold = -1;
    return (PyObject *)self;
}

static const CodecTables *tables_of(PyObject *codec)
{
    if (PyUnicode_Check(codec)) {
        if (PyUnicode_CompareWithASCIIString(codec, "PCMU") == 0)
            return &pcmu;
        if (PyUnicode_CompareWithASCIIString(codec, "PCMA") == 0)
            return &pcma;
    }
    return NULL;
}

/* The voiced frame's move; the event it decides (a new reference), or None. */
static PyObject *step_voiced(Core *self, double now)
{
    PyObject *state = self->state;
    self->last_voiced_end = now + FRAME_SECONDS;
    if (state == quiet || state == onset) {  /* -> ONSET */
        if (state == quiet) {
            self->run = 0;
            self->run_start = now;
        }
        self->run += 1;
        if (self->run >= self->start_frames) {
            Py_XSETREF(self->state, Py_NewRef(speaking));
            self->speech_start = self->run_start;
            self->run = 0;
            PyObject *at = PyFloat_FromDouble(self->run_start);
            if (at == NULL)
                return NULL;
            PyObject *event = PyObject_CallMethodOneArg((PyObject *)self, str_started, at);
            Py_DECREF(at);
            return event;
        }
        Py_XSETREF(self->state, Py_NewRef(onset));
        Py_RETURN_NONE;
    }
    if (state == speaking || state == trailing) {  /* -> SPEAKING */
        self->run = 0;
        Py_XSETREF(self->state, Py_NewRef(speaking));
        Py_RETURN_NONE;
    }
    PyErr_Format(PyExc_RuntimeError, "VAD state %R is not one of VadState's", state);
    return NULL;
}

/* The unvoiced frame's move (not from QUIET, which feed() does itself). */
static PyObject *step_unvoiced(Core *self)
{
    PyObject *state = self->state;
    if (state == speaking || state == trailing) {  /* -> TRAILING */
        self->run = state == speaking ? 1 : self->run + 1;
        if (self->run >= self->hangover_frames)
            return PyObject_CallMethodNoArgs((PyObject *)self, str_end);
        Py_XSETREF(self->state, Py_NewRef(trailing));
        Py_RETURN_NONE;
    }
    if (state == onset) {  /* a burst shorter than min_speech_ms: forgotten */
        self->run = 0;
        Py_XSETREF(self->state, Py_NewRef(quiet));
        Py_RETURN_NONE;
    }
    PyErr_Format(PyExc_RuntimeError, "VAD state %R is not one of VadState's", state);
    return NULL;
}

static PyObject *core_feed(Core *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "feed() takes the payload, the codec and now");
        return NULL;
    }
    if (quiet == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "eko_rtp.media._vad is not bound to vad.py's tables");
        return NULL;
    }
    PyObject *codec = args[1];
    const CodecTables *tables = tables_of(codec);
    if (tables == NULL) {
        PyErr_Format(PyExc_ValueError, "VAD codec must be one of PCMU, PCMA, not %R", codec);
        return NULL;
    }
    double now = PyFloat_AsDouble(args[2]);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *event = NULL, *result = NULL;
    if (view.len != FRAME_BYTES) {
        PyErr_Format(PyExc_ValueError, "VAD frames are %d bytes (%d ms of G.711), got %zd", FRAME_BYTES,
                     (int)(FRAME_SECONDS * 1000 + 0.5), view.len);
        goto done;
    }
    self->frames += 1;
    if (!is_none(self->last_now)) {
        double last = PyFloat_AsDouble(self->last_now);
        if (last == -1.0 && PyErr_Occurred())
            goto done;
        if (now - last > MISSING_AFTER) {
            /* Frames that never came are unvoiced; a long gap ends speech by itself.
             * nearbyint rounds half to even, as Python's round(). */
            long missing = (long)nearbyint((now - last) / FRAME_SECONDS) - 1;
            if (missing > 0) {
                PyObject *count = PyLong_FromLong(missing);
                if (count == NULL)
                    goto done;
                event = PyObject_CallMethodOneArg((PyObject *)self, str_missing, count);
                Py_DECREF(count);
                if (event == NULL)
                    goto done;
                if (event == Py_None)
                    Py_CLEAR(event);
            }
        }
    }
    Py_XSETREF(self->last_now, Py_NewRef(args[2]));
    if (is_none(self->pcm) || is_none(self->is_speech)) {
        PyObject *made = PyObject_CallMethodNoArgs((PyObject *)self, str_first_frame);
        if (made == NULL)
            goto done;
        Py_DECREF(made);
    }
    PyObject *pcm = self->pcm;
    if (pcm == NULL || !PyByteArray_CheckExact(pcm) || PyByteArray_GET_SIZE(pcm) != 2 * FRAME_BYTES) {
        PyErr_SetString(PyExc_RuntimeError, "the VAD's PCM buffer is not a bytearray of one frame");
        goto done;
    }
    /* Decode into the classifier's buffer: 16-bit little-endian linear PCM. */
    const uint8_t *payload = view.buf;
    uint8_t *out = (uint8_t *)PyByteArray_AS_STRING(pcm);
    for (int i = 0; i < FRAME_BYTES; i++) {
        out[2 * i] = tables->linear_low[payload[i]];
        out[2 * i + 1] = tables->linear_high[payload[i]];
    }
    PyObject *verdict;
    Py_INCREF(pcm);  /* the classifier may replace the buffer */
    if (!is_none(self->process)) {
        PyObject *call[4] = {self->handle == NULL ? Py_None : self->handle, sample_rate, pcm, samples_per_frame};
        verdict = PyObject_Vectorcall(self->process, call, 4, NULL);
    } else if (is_none(self->is_speech)) {
        PyErr_SetString(PyExc_RuntimeError, "the VAD has no classifier after its first frame");
        verdict = NULL;
    } else {
        verdict = PyObject_CallOneArg(self->is_speech, pcm);
    }
    Py_DECREF(pcm);
    if (verdict == NULL)
        goto done;
    int speech = PyObject_IsTrue(verdict);
    Py_DECREF(verdict);
    if (speech < 0)
        goto done;
    int voiced;
    if (self->frames <= self->warmup_frames) {
        voiced = 0;
    } else if (speech && self->threshold >= 0 && (self->state == quiet || self->state == onset)) {
        long long energy = 0;
        for (int i = 0; i < FRAME_BYTES; i++)
            energy += tables->energy[payload[i]];
        voiced = energy >= self->threshold;
    } else {
        voiced = speech;
    }
    PyObject *step;
    if (voiced) {
        step = step_voiced(self, now);
    } else if (self->state == quiet) {
        self->run = 0;  /* silence goes on: the most common frame */
        step = Py_NewRef(Py_None);
    } else {
        step = step_unvoiced(self);
    }
    if (step == NULL)
        goto done;
    /* Both at once is impossible (vad.py's feed says why): the gap's event first. */
    if (event != NULL) {
        Py_DECREF(step);
        result = event;
        event = NULL;
    } else {
        result = step;
    }
done:
    Py_XDECREF(event);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef core_methods[] = {
    {"feed", (PyCFunction)(void (*)(void))core_feed, METH_FASTCALL,
     "feed(payload, codec, now): take the frame starting at now (s); the event it decided, if any."},
    {NULL},
};

/* An object member (deleted from Python it is NULL, which reads as None). */
#define OBJECT_MEMBER(name, field, doc) \
    {name, T_OBJECT, offsetof(Core, field), 0, doc}

static PyMemberDef core_members[] = {
    OBJECT_MEMBER("state", state, "the VadState"),
    {"frames", T_PYSSIZET, offsetof(Core, frames), 0, "frames fed"},
    OBJECT_MEMBER("_is_speech", is_speech, NULL),
    OBJECT_MEMBER("_process", process, NULL),
    OBJECT_MEMBER("_handle", handle, NULL),
    OBJECT_MEMBER("_pcm", pcm, NULL),
    OBJECT_MEMBER("_last_now", last_now, NULL),
    {"_threshold", T_LONGLONG, offsetof(Core, threshold), 0, NULL},
    {"_start_frames", T_INT, offsetof(Core, start_frames), 0, NULL},
    {"_hangover_frames", T_INT, offsetof(Core, hangover_frames), 0, NULL},
    {"_warmup_frames", T_INT, offsetof(Core, warmup_frames), 0, NULL},
    {"_run", T_INT, offsetof(Core, run), 0, NULL},
    {"_run_start", T_DOUBLE, offsetof(Core, run_start), 0, NULL},
    {"_speech_start", T_DOUBLE, offsetof(Core, speech_start), 0, NULL},
    {"_last_voiced_end", T_DOUBLE, offsetof(Core, last_voiced_end), 0, NULL},
    {NULL},
};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "eko_rtp.media._vad.VadCore",
    .tp_doc = "What VoiceActivityDetector.feed reads, and feed: the compiled twin of vad.PythonVadCore.",
    CORE_TYPE_SLOTS,
    .tp_methods = core_methods,
    .tp_members = core_members,
};

static int copy_table(PyObject *source, uint8_t *into, const char *what)
{
    if (!PyBytes_Check(source) || PyBytes_GET_SIZE(source) != 256) {
        PyErr_Format(PyExc_ValueError, "bind(): the %s table must be 256 bytes", what);
        return -1;
    }
    memcpy(into, PyBytes_AS_STRING(source), 256);
    return 0;
}

/* tables: (linear low, linear high, energy low, energy middle, energy high), 256 bytes each. */
static int bind_codec(PyObject *tables, CodecTables *codec)
{
    uint8_t energy[3][256];
    if (!PyTuple_Check(tables) || PyTuple_GET_SIZE(tables) != 5) {
        PyErr_SetString(PyExc_ValueError, "bind(): a codec's tables are a tuple of five");
        return -1;
    }
    if (copy_table(PyTuple_GET_ITEM(tables, 0), codec->linear_low, "linear low") < 0
        || copy_table(PyTuple_GET_ITEM(tables, 1), codec->linear_high, "linear high") < 0)
        return -1;
    for (int digit = 0; digit < 3; digit++)
        if (copy_table(PyTuple_GET_ITEM(tables, 2 + digit), energy[digit], "energy") < 0)
            return -1;
    for (int code = 0; code < 256; code++)
        codec->energy[code] = energy[0][code] | (uint32_t)energy[1][code] << 8 | (uint32_t)energy[2][code] << 16;
    return 0;
}

static PyObject *vad_bind(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyTuple_Check(args[0]) || PyTuple_GET_SIZE(args[0]) != 4) {
        PyErr_SetString(PyExc_TypeError, "bind((QUIET, ONSET, SPEAKING, TRAILING), pcmu_tables, pcma_tables)");
        return NULL;
    }
    CodecTables u, a;
    if (bind_codec(args[1], &u) < 0 || bind_codec(args[2], &a) < 0)
        return NULL;
    pcmu = u;
    pcma = a;
    PyObject *states = args[0];
    Py_XSETREF(quiet, Py_NewRef(PyTuple_GET_ITEM(states, 0)));
    Py_XSETREF(onset, Py_NewRef(PyTuple_GET_ITEM(states, 1)));
    Py_XSETREF(speaking, Py_NewRef(PyTuple_GET_ITEM(states, 2)));
    Py_XSETREF(trailing, Py_NewRef(PyTuple_GET_ITEM(states, 3)));
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"bind", (PyCFunction)(void (*)(void))vad_bind, METH_FASTCALL,
     "bind(states, pcmu_tables, pcma_tables): VadState's four members, and each codec's tables."},
    {NULL},
};

static struct PyModuleDef vad_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "eko_rtp.media._vad",
    .m_doc = "Compiled per-frame voice activity detection of one call (eko_rtp/media/vad.py's twin).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__vad(void)
{
    if (str_first_frame == NULL) {
        static const CoreName names[] = {
            {&str_first_frame, "_first_frame"}, {&str_missing, "_missing"}, {&str_started, "_started"},
            {&str_end, "_end"},
        };
        if (intern_names(names, sizeof(names) / sizeof(names[0])) < 0)
            return NULL;
        sample_rate = PyLong_FromLong(SAMPLE_RATE);
        samples_per_frame = PyLong_FromLong(FRAME_BYTES);
        if (!sample_rate || !samples_per_frame)
            return NULL;
    }
    return module_with_type(&vad_module, &CoreType, "VadCore");
}
