/* The per-packet state of RTP in C: the compiled twin of eko_rtp/media/rtp.py's
 * PythonRtpSender (our stream's header) and PythonStatisticsState (RFC 3550
 * Appendix A.1 sequence validation and A.8 jitter of the caller's stream), with the
 * same methods, attributes and errors (tests/test_rtp.py runs its tables against
 * both).
 *
 * Why a twin: every frame of every call rewrites the header and every caller packet
 * goes through A.1, and in Python each is a dozen attribute loads and stores around
 * a few integer operations, a tenth of a busy server's time (docs/BENCHMARKS.md,
 * fourteenth session). The rules stay where they are read: rtp.py holds the
 * reference code and the reports built from this state (ReceiverStatistics is a
 * Python class on top of either state), this file holds the same steps, in C.
 *
 * Nothing here allocates per packet: the header is one bytearray per sender,
 * rewritten in place, and feed() returns a shared bool. The GIL is held throughout.
 *
 * payload_bounds_untrusted() is the twin of rtp.py's python_payload_bounds_untrusted:
 * the listening path asks it for every audio packet. It raises rtp.py's RtpError,
 * handed over by bind_rtp_error() when rtp.py loads this module. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <math.h>
#include <stdint.h>

#define HEADER_SIZE 12
#define SAMPLES_PER_FRAME 160 /* codec/frame.py: 20 ms of 8 kHz G.711 */
#define VERSION_2 0x80
#define MARKER_BIT 0x80

/* RFC 3550 Appendix A.1 */
#define MAX_DROPOUT 3000
#define MAX_MISORDER 100
#define MIN_SEQUENTIAL 2
#define SEQUENCE_MOD 65536

/* -- our stream's header --------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *header; /* the one bytearray(12) handed out by header_for_next_frame */
    uint32_t ssrc;
    int payload_type;
    uint16_t sequence;
    uint32_t timestamp;
    long long packets_sent;
    long long octets_sent;
} Sender;

static int check_payload_type(PyObject *value, int *payload_type)
{
    int overflow = 0;
    long number = PyLong_Check(value) && !PyBool_Check(value) ? PyLong_AsLongAndOverflow(value, &overflow) : -1;
    if (number == -1 && PyErr_Occurred())
        return -1;
    if (!PyLong_Check(value) || PyBool_Check(value) || overflow || number < 0 || number > 127) {
        PyErr_Format(PyExc_ValueError, "payload type must be 0..127, not %R", value);
        return -1;
    }
    *payload_type = (int)number;
    return 0;
}

static int random_bits(PyObject *rng, int bits, unsigned long long *out)
{
    PyObject *value = PyObject_CallMethod(rng, "getrandbits", "i", bits);
    if (value == NULL)
        return -1;
    *out = PyLong_AsUnsignedLongLongMask(value);
    Py_DECREF(value);
    return (*out == (unsigned long long)-1 && PyErr_Occurred()) ? -1 : 0;
}

static int sender_init(Sender *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"payload_type", "rng", NULL};
    PyObject *payload_type = NULL, *rng = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$OO:RtpSender", keywords, &payload_type, &rng))
        return -1;
    if (payload_type == NULL) {
        PyErr_SetString(PyExc_TypeError, "RtpSender() missing required keyword-only argument: 'payload_type'");
        return -1;
    }
    if (check_payload_type(payload_type, &self->payload_type) < 0)
        return -1;
    PyObject *owned = NULL;
    if (rng == Py_None) { /* secrets: RFC 3550 §5.1 wants them unpredictable */
        PyObject *secrets = PyImport_ImportModule("secrets");
        if (secrets == NULL)
            return -1;
        owned = rng = PyObject_CallMethod(secrets, "SystemRandom", NULL);
        Py_DECREF(secrets);
        if (rng == NULL)
            return -1;
    }
    unsigned long long ssrc, sequence, timestamp;
    int failed = random_bits(rng, 32, &ssrc) < 0 || random_bits(rng, 16, &sequence) < 0 ||
                 random_bits(rng, 32, &timestamp) < 0;
    Py_XDECREF(owned);
    if (failed)
        return -1;
    self->ssrc = (uint32_t)ssrc;
    self->sequence = (uint16_t)sequence;
    self->timestamp = (uint32_t)timestamp;
    self->packets_sent = 0;
    self->octets_sent = 0;
    PyObject *header = PyByteArray_FromStringAndSize(NULL, HEADER_SIZE);
    if (header == NULL)
        return -1;
    memset(PyByteArray_AS_STRING(header), 0, HEADER_SIZE);
    Py_XSETREF(self->header, header);
    return 0;
}

static void sender_dealloc(Sender *self)
{
    Py_CLEAR(self->header);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *sender_header_for_next_frame(Sender *self, PyObject *const *args, Py_ssize_t nargs,
                                              PyObject *kwnames)
{
    PyObject *marker_object = Py_False;
    Py_ssize_t given = nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
    if (given > 1 || (kwnames && PyTuple_GET_SIZE(kwnames) == 1 &&
                      !_PyUnicode_EqualToASCIIString(PyTuple_GET_ITEM(kwnames, 0), "marker"))) {
        PyErr_SetString(PyExc_TypeError, "header_for_next_frame() takes one argument, marker");
        return NULL;
    }
    if (given == 1)
        marker_object = args[0];
    int marker = marker_object == Py_False ? 0 : marker_object == Py_True ? 1 : PyObject_IsTrue(marker_object);
    if (marker < 0)
        return NULL;
    if (self->header == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "RtpSender is not initialised");
        return NULL;
    }
    unsigned char *out = (unsigned char *)PyByteArray_AS_STRING(self->header);
    uint16_t sequence = self->sequence;
    uint32_t timestamp = self->timestamp, ssrc = self->ssrc;
    out[0] = VERSION_2;
    out[1] = (unsigned char)(marker ? (MARKER_BIT | self->payload_type) : self->payload_type);
    out[2] = sequence >> 8;
    out[3] = sequence & 0xFF;
    out[4] = timestamp >> 24;
    out[5] = (timestamp >> 16) & 0xFF;
    out[6] = (timestamp >> 8) & 0xFF;
    out[7] = timestamp & 0xFF;
    out[8] = ssrc >> 24;
    out[9] = (ssrc >> 16) & 0xFF;
    out[10] = (ssrc >> 8) & 0xFF;
    out[11] = ssrc & 0xFF;
    self->sequence = (uint16_t)(sequence + 1);
    self->timestamp = timestamp + SAMPLES_PER_FRAME;
    self->packets_sent += 1;
    self->octets_sent += SAMPLES_PER_FRAME;
    return Py_NewRef(self->header);
}

static PyObject *sender_set_payload_type(Sender *self, PyObject *value)
{
    if (check_payload_type(value, &self->payload_type) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* An int argument as a C long long; TypeError for anything else (as the Python
 * twin's range checks would fail on it), OverflowError beyond 64 bits. */
static int samples_of(PyObject *value, long long *samples)
{
    if (!PyLong_Check(value)) {
        PyErr_Format(PyExc_TypeError, "samples must be an int, not %.100s", Py_TYPE(value)->tp_name);
        return -1;
    }
    *samples = PyLong_AsLongLong(value);
    return (*samples == -1 && PyErr_Occurred()) ? -1 : 0;
}

static PyObject *sender_rewind(Sender *self, PyObject *value)
{
    long long samples;
    if (samples_of(value, &samples) < 0)
        return NULL;
    if (samples < 0 || samples > SAMPLES_PER_FRAME) {
        PyErr_Format(PyExc_ValueError, "can rewind 0..%d samples, not %lld", SAMPLES_PER_FRAME, samples);
        return NULL;
    }
    self->timestamp -= (uint32_t)samples;
    Py_RETURN_NONE;
}

static PyObject *sender_skip(Sender *self, PyObject *value)
{
    long long samples;
    if (samples_of(value, &samples) < 0)
        return NULL;
    if (samples < 0) {
        PyErr_Format(PyExc_ValueError, "cannot skip a negative number of samples (%lld)", samples);
        return NULL;
    }
    self->timestamp += (uint32_t)(samples & 0xFFFFFFFFLL);
    Py_RETURN_NONE;
}

static PyObject *sender_next_sequence(Sender *self, void *closure)
{
    return PyLong_FromUnsignedLong(self->sequence);
}

static PyObject *sender_next_timestamp(Sender *self, void *closure)
{
    return PyLong_FromUnsignedLong(self->timestamp);
}

static PyObject *sender_ssrc(Sender *self, void *closure)
{
    return PyLong_FromUnsignedLong(self->ssrc);
}

static PyObject *sender_payload_type(Sender *self, void *closure)
{
    return PyLong_FromLong(self->payload_type);
}

static PyMethodDef sender_methods[] = {
    {"header_for_next_frame", (PyCFunction)(void (*)(void))sender_header_for_next_frame,
     METH_FASTCALL | METH_KEYWORDS,
     "Write the next packet's header into the shared bytearray and return it (send it before the next call)."},
    {"set_payload_type", (PyCFunction)sender_set_payload_type, METH_O,
     "Switch codec after a re-INVITE; sequence and timestamp run on."},
    {"rewind", (PyCFunction)sender_rewind, METH_O, "Take back up to one frame's samples of the timestamp."},
    {"skip", (PyCFunction)sender_skip, METH_O, "Advance the timestamp over a silence we do not send."},
    {NULL},
};

static PyMemberDef sender_members[] = {
    {"packets_sent", T_LONGLONG, offsetof(Sender, packets_sent), 0, "RTP packets sent (for the SR)"},
    {"octets_sent", T_LONGLONG, offsetof(Sender, octets_sent), 0, "payload octets sent (for the SR)"},
    {NULL},
};

static PyGetSetDef sender_getset[] = {
    {"ssrc", (getter)sender_ssrc, NULL, "our stream's SSRC", NULL},
    {"payload_type", (getter)sender_payload_type, NULL, "the payload type of our frames", NULL},
    {"next_sequence", (getter)sender_next_sequence, NULL, "the sequence number the next header will carry", NULL},
    {"next_timestamp", (getter)sender_next_timestamp, NULL, "the RTP timestamp the next header will carry", NULL},
    {NULL},
};

static PyTypeObject SenderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "eko_rtp.media._rtp.RtpSender",
    .tp_basicsize = sizeof(Sender),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Header state of our outgoing stream (one per call): the compiled twin of rtp.PythonRtpSender.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)sender_init,
    .tp_dealloc = (destructor)sender_dealloc,
    .tp_methods = sender_methods,
    .tp_members = sender_members,
    .tp_getset = sender_getset,
};

/* -- the caller's stream: A.1 and A.8 -------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *ssrc;            /* None, or the source's SSRC (int) */
    PyObject *last_sr_arrival; /* None, or a float */
    double clock_rate;
    PyObject *clock_rate_object;
    double transit;
    double jitter;
    long long cycles;
    long long received;
    long long expected_prior;
    long long received_prior;
    long long last_sr;
    int started;
    int probation;
    int has_transit;
    int max_seq;
    int base_seq;
    int bad_seq;
} State;

static void state_reset(State *self, PyObject *ssrc)
{
    Py_INCREF(ssrc);
    Py_XSETREF(self->ssrc, ssrc);
    self->started = 0;
    self->probation = MIN_SEQUENTIAL;
    self->max_seq = 0;
    self->cycles = 0;
    self->base_seq = 0;
    self->bad_seq = SEQUENCE_MOD + 1;
    self->received = 0;
    self->expected_prior = 0;
    self->received_prior = 0;
    self->has_transit = 0;
    self->transit = 0.0;
    self->jitter = 0.0;
    self->last_sr = 0;
    Py_INCREF(Py_None);
    Py_XSETREF(self->last_sr_arrival, Py_None);
}

static PyObject *state_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    State *self = (State *)PyType_GenericNew(type, args, kwargs);
    if (self == NULL)
        return NULL;
    /* A subclass whose __init__ skips ours still gets a source-less state at 8 kHz. */
    self->clock_rate = 8000.0;
    self->clock_rate_object = PyLong_FromLong(8000);
    if (self->clock_rate_object == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    state_reset(self, Py_None);
    return (PyObject *)self;
}

static int state_init(State *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"clock_rate", NULL};
    PyObject *clock_rate = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$O:ReceiverStatistics", keywords, &clock_rate))
        return -1;
    double rate = 8000.0;
    if (clock_rate == NULL) {
        clock_rate = PyLong_FromLong(8000);
        if (clock_rate == NULL)
            return -1;
    } else {
        rate = PyFloat_AsDouble(clock_rate);
        if (rate == -1.0 && PyErr_Occurred())
            return -1;
        Py_INCREF(clock_rate);
    }
    if (!(rate > 0)) {
        PyErr_Format(PyExc_ValueError, "clock_rate must be positive, not %R", clock_rate);
        Py_DECREF(clock_rate);
        return -1;
    }
    Py_XSETREF(self->clock_rate_object, clock_rate);
    self->clock_rate = rate;
    state_reset(self, Py_None);
    return 0;
}

static int state_traverse(State *self, visitproc visit, void *arg)
{
    Py_VISIT(self->ssrc);
    Py_VISIT(self->last_sr_arrival);
    Py_VISIT(self->clock_rate_object);
    return 0;
}

static int state_clear(State *self)
{
    Py_CLEAR(self->ssrc);
    Py_CLEAR(self->last_sr_arrival);
    Py_CLEAR(self->clock_rate_object);
    return 0;
}

static void state_dealloc(State *self)
{
    PyObject_GC_UnTrack(self);
    state_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static void init_seq(State *self, int sequence)
{
    self->base_seq = sequence;
    self->max_seq = sequence;
    self->bad_seq = SEQUENCE_MOD + 1;
    self->cycles = 0;
    self->received = 0;
    self->expected_prior = 0;
    self->received_prior = 0;
}

/* Appendix A.1, update_seq(), the same steps as rtp.py's. */
static int update_seq(State *self, int sequence)
{
    int udelta = (sequence - self->max_seq) & 0xFFFF;
    if (self->probation) {
        if (sequence == ((self->max_seq + 1) & 0xFFFF)) {
            self->probation -= 1;
            self->max_seq = sequence;
            if (self->probation == 0) {
                init_seq(self, sequence);
                self->received += 1;
                return 1;
            }
        } else {
            self->probation = MIN_SEQUENTIAL - 1;
            self->max_seq = sequence;
        }
        return 0;
    }
    if (udelta < MAX_DROPOUT) {
        if (sequence < self->max_seq)
            self->cycles += SEQUENCE_MOD;
        self->max_seq = sequence;
    } else if (udelta <= SEQUENCE_MOD - MAX_MISORDER) {
        if (sequence == self->bad_seq) {
            init_seq(self, sequence); /* two sequential packets after a big jump: the sender restarted */
        } else {
            self->bad_seq = (sequence + 1) & 0xFFFF;
            return 0;
        }
    }
    self->received += 1;
    return 1;
}

/* Appendix A.8: J += (|D| - J) / 16, D folded back over the 2^32 timestamp wrap. */
static void update_jitter(State *self, uint32_t rtp_timestamp, double arrival)
{
    double transit = arrival * self->clock_rate - (double)rtp_timestamp;
    if (self->has_transit) {
        double delta = fmod(transit - self->transit + 2147483648.0, 4294967296.0);
        if (delta < 0)
            delta += 4294967296.0; /* Python's % takes the divisor's sign */
        delta -= 2147483648.0;
        self->jitter += (fabs(delta) - self->jitter) / 16;
    }
    self->transit = transit;
    self->has_transit = 1;
}

static int unsigned_field(PyObject *value, const char *name, unsigned long long limit, unsigned long long *out)
{
    if (!PyLong_Check(value)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s", name, Py_TYPE(value)->tp_name);
        return -1;
    }
    int overflow = 0;
    long long number = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (number == -1 && PyErr_Occurred())
        return -1;
    if (overflow || number < 0 || (unsigned long long)number > limit) {
        PyErr_Format(PyExc_ValueError, "%s must be 0..%llu, not %R", name, limit, value);
        return -1;
    }
    *out = (unsigned long long)number;
    return 0;
}

/* feed(sequence, rtp_timestamp, arrival_time, ssrc=None) -> bool */
static PyObject *state_feed(State *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *names[] = {"sequence", "rtp_timestamp", "arrival_time", "ssrc"};
    PyObject *values[4] = {NULL, NULL, NULL, Py_None};
    if (nargs > 4) {
        PyErr_Format(PyExc_TypeError, "feed() takes at most 4 arguments, not %zd", nargs);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nargs; i++)
        values[i] = args[i];
    Py_ssize_t keywords = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < keywords; k++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, k);
        int found = 0;
        for (int i = 0; i < 4; i++) {
            if (_PyUnicode_EqualToASCIIString(name, names[i])) {
                if (i < nargs) {
                    PyErr_Format(PyExc_TypeError, "feed() got multiple values for argument '%s'", names[i]);
                    return NULL;
                }
                values[i] = args[nargs + k];
                found = 1;
                break;
            }
        }
        if (!found) {
            PyErr_Format(PyExc_TypeError, "feed() got an unexpected keyword argument '%U'", name);
            return NULL;
        }
    }
    for (int i = 0; i < 3; i++) {
        if (values[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "feed() missing required argument '%s'", names[i]);
            return NULL;
        }
    }
    unsigned long long sequence_value, timestamp_value;
    if (unsigned_field(values[0], "sequence", 0xFFFF, &sequence_value) < 0 ||
        unsigned_field(values[1], "rtp_timestamp", 0xFFFFFFFFULL, &timestamp_value) < 0)
        return NULL;
    int sequence = (int)sequence_value;
    PyObject *arrival_object = values[2], *ssrc = values[3];
    double arrival = 0.0;
    int has_arrival = arrival_object != Py_None;
    if (has_arrival) {
        arrival = PyFloat_AsDouble(arrival_object);
        if (arrival == -1.0 && PyErr_Occurred())
            return NULL;
    }
    if (ssrc == Py_None && !self->probation && self->started && sequence == ((self->max_seq + 1) & 0xFFFF)) {
        /* The common case, every packet of a healthy stream: the next in order. */
        if (sequence == 0)
            self->cycles += SEQUENCE_MOD;
        self->max_seq = sequence;
        self->received += 1;
        if (has_arrival)
            update_jitter(self, (uint32_t)timestamp_value, arrival);
        Py_RETURN_TRUE;
    }
    if (ssrc != Py_None) {
        int same = self->ssrc == Py_None ? 0 : PyObject_RichCompareBool(ssrc, self->ssrc, Py_EQ);
        if (same < 0)
            return NULL;
        if (!same)
            state_reset(self, ssrc); /* a new SSRC is a new source: statistics start over (§8.2) */
    }
    if (!self->started) { /* the first packet of a source: A.1 init_seq(), then probation */
        self->started = 1;
        init_seq(self, sequence);
        self->max_seq = (sequence - 1) & 0xFFFF;
    }
    int accepted = update_seq(self, sequence);
    if (accepted && has_arrival)
        update_jitter(self, (uint32_t)timestamp_value, arrival);
    return PyBool_FromLong(accepted);
}

static PyObject *state_transit(State *self, void *closure)
{
    if (!self->has_transit)
        Py_RETURN_NONE;
    return PyFloat_FromDouble(self->transit);
}

static PyObject *state_clock_rate(State *self, void *closure)
{
    if (self->clock_rate_object == NULL)
        Py_RETURN_NONE;
    return Py_NewRef(self->clock_rate_object);
}

static PyObject *state_ssrc(State *self, void *closure)
{
    return Py_NewRef(self->ssrc ? self->ssrc : Py_None);
}

static PyObject *state_last_sr_arrival(State *self, void *closure)
{
    return Py_NewRef(self->last_sr_arrival ? self->last_sr_arrival : Py_None);
}

static int state_set_last_sr_arrival(State *self, PyObject *value, void *closure)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "_last_sr_arrival cannot be deleted");
        return -1;
    }
    if (value != Py_None && !PyFloat_Check(value) && !PyLong_Check(value)) {
        PyErr_Format(PyExc_TypeError, "_last_sr_arrival must be a number or None, not %.100s",
                     Py_TYPE(value)->tp_name);
        return -1;
    }
    Py_INCREF(value);
    Py_XSETREF(self->last_sr_arrival, value);
    return 0;
}

static PyMethodDef state_methods[] = {
    {"feed", (PyCFunction)(void (*)(void))state_feed, METH_FASTCALL | METH_KEYWORDS,
     "Account for one packet; False when A.1 rejects it (probation, jump)."},
    {NULL},
};

static PyMemberDef state_members[] = {
    {"received", T_LONGLONG, offsetof(State, received), READONLY, "packets received and accepted (A.3)"},
    {"_cycles", T_LONGLONG, offsetof(State, cycles), READONLY, NULL},
    {"_max_seq", T_INT, offsetof(State, max_seq), READONLY, NULL},
    {"_base_seq", T_INT, offsetof(State, base_seq), READONLY, NULL},
    {"_probation", T_INT, offsetof(State, probation), READONLY, NULL},
    {"_jitter", T_DOUBLE, offsetof(State, jitter), READONLY, NULL},
    {"_expected_prior", T_LONGLONG, offsetof(State, expected_prior), 0, NULL},
    {"_received_prior", T_LONGLONG, offsetof(State, received_prior), 0, NULL},
    {"_last_sr", T_LONGLONG, offsetof(State, last_sr), 0, NULL},
    {NULL},
};

static PyGetSetDef state_getset[] = {
    {"ssrc", (getter)state_ssrc, NULL, "the source's SSRC, None until one was given", NULL},
    {"clock_rate", (getter)state_clock_rate, NULL, "the payload's RTP clock rate", NULL},
    {"_transit", (getter)state_transit, NULL, NULL, NULL},
    {"_last_sr_arrival", (getter)state_last_sr_arrival, (setter)state_set_last_sr_arrival, NULL, NULL},
    {NULL},
};

static PyTypeObject StateType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "eko_rtp.media._rtp.StatisticsState",
    .tp_basicsize = sizeof(State),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A.1 and A.8 state of the caller's stream: the compiled twin of rtp.PythonStatisticsState.",
    .tp_new = state_new,
    .tp_init = (initproc)state_init,
    .tp_traverse = (traverseproc)state_traverse,
    .tp_clear = (inquiry)state_clear,
    .tp_dealloc = (destructor)state_dealloc,
    .tp_methods = state_methods,
    .tp_members = state_members,
    .tp_getset = state_getset,
};

/* -- a datagram's payload ----------------------------------------------------------- */

#define PADDING_BIT 0x20
#define EXTENSION_BIT 0x10
#define CSRC_COUNT_MASK 0x0F

static PyObject *rtp_error;

static PyObject *bind_rtp_error(PyObject *module, PyObject *error)
{
    if (!PyExceptionClass_Check(error)) {
        PyErr_SetString(PyExc_TypeError, "bind_rtp_error() takes rtp.py's RtpError class");
        return NULL;
    }
    Py_XSETREF(rtp_error, Py_NewRef(error));
    Py_RETURN_NONE;
}

/* Where the payload of an RTP datagram starts and ends: past the fixed header, the
 * CSRCs (RFC 3550 5.1), the header extension (5.3.1), before the padding (5.1). */
static PyObject *payload_bounds_untrusted(PyObject *module, PyObject *data)
{
    if (rtp_error == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "eko_rtp.media._rtp has no RtpError bound");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const uint8_t *octets = view.buf;
    Py_ssize_t size = view.len, start, end;
    PyObject *result = NULL;
    if (size < HEADER_SIZE) {
        PyErr_Format(rtp_error, "RTP packet truncated: %zd octets, the fixed header needs %d", size, HEADER_SIZE);
        goto done;
    }
    uint8_t first = octets[0];
    if (first >> 6 != 2) {
        PyErr_Format(rtp_error, "RTP version %d, expected 2", first >> 6);
        goto done;
    }
    int csrc_count = first & CSRC_COUNT_MASK;
    start = HEADER_SIZE + 4 * csrc_count;
    if (size < start) {
        PyErr_Format(rtp_error, "RTP packet truncated: %zd octets, a header with %d CSRCs needs %zd", size,
                     csrc_count, start);
        goto done;
    }
    if (first & EXTENSION_BIT) {
        if (size < start + 4) {
            PyErr_Format(rtp_error, "RTP packet truncated: %zd octets, the header extension starts at %zd and needs 4",
                         size, start);
            goto done;
        }
        int extension_words = octets[start + 2] << 8 | octets[start + 3];
        Py_ssize_t extension_end = start + 4 + 4 * (Py_ssize_t)extension_words;
        if (size < extension_end) {
            PyErr_Format(rtp_error, "RTP packet truncated: %zd octets, the header extension of %d words needs %zd",
                         size, extension_words, extension_end);
            goto done;
        }
        start = extension_end;
    }
    end = size;
    if (first & PADDING_BIT) {
        /* 5.1: the last octet of the padding counts the padding octets, itself included */
        int padding = octets[size - 1];
        if (padding == 0 || padding > size - start) {
            PyErr_Format(rtp_error, "RTP padding count %d invalid: %zd octets follow the header", padding,
                         size - start);
            goto done;
        }
        end = size - padding;
    }
    result = Py_BuildValue("(nn)", start, end);
done:
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef module_methods[] = {
    {"payload_bounds_untrusted", (PyCFunction)payload_bounds_untrusted, METH_O,
     "payload_bounds_untrusted(data): (start, end) of the payload; raises only RtpError."},
    {"bind_rtp_error", (PyCFunction)bind_rtp_error, METH_O, "bind_rtp_error(RtpError): the error raised."},
    {NULL},
};

static struct PyModuleDef rtp_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "eko_rtp.media._rtp",
    .m_doc = "Compiled per-packet RTP state (eko_rtp/media/rtp.py's twins).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__rtp(void)
{
    if (PyType_Ready(&SenderType) < 0 || PyType_Ready(&StateType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&rtp_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "RtpSender", (PyObject *)&SenderType) < 0 ||
        PyModule_AddObjectRef(module, "StatisticsState", (PyObject *)&StateType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
