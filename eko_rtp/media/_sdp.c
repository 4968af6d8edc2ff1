/* An SDP body parsed in C: the compiled twin of eko_rtp/media/sdp.py's
 * parse_sdp_untrusted, for the offers and answers a trunk sends: printable ASCII
 * lines, and no a=crypto (SRTP keys stay with sdp.py).
 *
 * Why: an INVITE's offer is parsed once per call, cold (its code and data have left
 * the CPU's caches since the last call), and its dozen lines, their fields and the
 * values made of them cost several dozen Python calls (docs/BENCHMARKS.md, twentieth
 * session). Here one pass over the bytes makes the SessionDescription with its
 * SdpOrigin, MediaDescriptions and RtpMaps, field by field as their constructors
 * would once every check has passed.
 *
 * parse() answers None for anything outside that subset or faulty, and sdp.py then
 * parses the body in Python, which says what is wrong with it. So the twin never has
 * to say why, and for what it accepts it gives exactly what the Python parser gives
 * (tests/test_sdp_scan.py compares them).
 *
 * Cost: linear in the body, which sdp.py bounds (MAX_SDP_SIZE, passed to bind()). */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "../_values.h"

static PyObject *session_class, *media_class, *origin_class, *rtpmap_class, *directions, *sendrecv;
static Py_ssize_t max_size = -1;
static PyObject *str_origin, *str_media, *str_username, *str_session_id, *str_version, *str_address, *str_port,
    *str_protocol, *str_formats, *str_connection_address, *str_rtpmaps, *str_fmtps, *str_ptime, *str_maxptime,
    *str_direction, *str_rtcp_port, *str_rtcp_address, *str_rtcp_mux, *str_crypto, *str_line, *str_payload_type,
    *str_encoding, *str_clock_rate, *str_channels;

typedef struct {
    const char *text;
    Py_ssize_t length;
} Span;

static PyObject *text_of(Span span)
{
    return ascii_text(span.text, span.length);
}

static int is_space(char c)
{
    return c == ' ' || c == '\t';
}

static Span trimmed(Span span)
{
    while (span.length > 0 && is_space(span.text[0])) {
        span.text++;
        span.length--;
    }
    while (span.length > 0 && is_space(span.text[span.length - 1]))
        span.length--;
    return span;
}

/* str.split() of a value: at most max fields (count in *count); 0 when there are more. */
static int split_fields(Span value, Span *fields, int max, int *count)
{
    *count = 0;
    Py_ssize_t at = 0;
    while (1) {
        while (at < value.length && is_space(value.text[at]))
            at++;
        if (at >= value.length)
            return 1;
        if (*count == max)
            return 0;
        Py_ssize_t start = at;
        while (at < value.length && !is_space(value.text[at]))
            at++;
        fields[*count].text = value.text + start;
        fields[*count].length = at - start;
        (*count)++;
    }
}

/* sdp._parse_int: ASCII digits, at most maximum (a 64-bit one at most); -1 otherwise. */
static int parse_number(Span text, unsigned long long maximum, unsigned long long *value)
{
    if (text.length < 1 || text.length > 20)
        return -1;
    unsigned long long result = 0;
    for (Py_ssize_t i = 0; i < text.length; i++) {
        char c = text.text[i];
        if (c < '0' || c > '9')
            return -1;
        unsigned long long digit = (unsigned long long)(c - '0');
        if (result > (maximum - digit) / 10)
            return -1; /* past maximum (and so never past 2**64 - 1) */
        result = result * 10 + digit;
    }
    *value = result;
    return 0;
}

static int equals(Span span, const char *text)
{
    size_t length = strlen(text);
    return (size_t)span.length == length && memcmp(span.text, text, length) == 0;
}

/* One m= section while its lines are read (sdp._MediaBuilder). */
typedef struct {
    Span media, protocol;
    PyObject *formats;      /* tuple of str */
    long port, line;
    Span connection;        /* length -1: none */
    PyObject *rtpmaps, *fmtps;
    long ptime, maxptime;   /* -1: none */
    PyObject *direction;    /* borrowed from directions, or NULL */
    int rtcp_mux;
    long rtcp_port;         /* -1: none */
    Span rtcp_address;      /* length -1: none */
} Media;

/* sdp._parse_connection of fields already split: "IN IP4|IP6 <address>[/...]". */
static int connection_fields(Span *fields, int count, Span *address)
{
    if (count != 3 || !equals(fields[0], "IN") || !(equals(fields[1], "IP4") || equals(fields[1], "IP6")))
        return 0;
    const char *slash = memchr(fields[2].text, '/', (size_t)fields[2].length);
    address->text = fields[2].text;
    address->length = slash == NULL ? fields[2].length : slash - fields[2].text;
    return 1;
}

/* sdp._parse_connection: the address of a c= value; 0 when faulty. */
static int connection(Span value, Span *address)
{
    Span fields[3];
    int count;
    return split_fields(value, fields, 3, &count) && connection_fields(fields, count, address);
}

/* An attribute of a media section; 0 when outside the subset or faulty, -1 on an error. */
static int attribute(Media *media, Span name, Span value)
{
    if (equals(name, "rtpmap")) {
        const char *space = memchr(value.text, ' ', (size_t)value.length);
        Span payload = {value.text, space == NULL ? value.length : space - value.text};
        Span encoding = {space == NULL ? value.text + value.length : space + 1,
                         space == NULL ? 0 : value.length - payload.length - 1};
        encoding = trimmed(encoding);
        unsigned long long payload_type, clock_rate, channels = 1;
        if (parse_number(payload, 127, &payload_type) < 0)
            return 0;
        Span parts[3];
        int count = 0;
        Py_ssize_t start = 0;
        for (Py_ssize_t i = 0; i <= encoding.length; i++) {
            if (i < encoding.length && encoding.text[i] != '/')
                continue;
            if (count == 3)
                return 0; /* more than name/rate/channels */
            parts[count].text = encoding.text + start;
            parts[count].length = i - start;
            count++;
            start = i + 1;
        }
        if (count < 2 || parts[0].length == 0 || parse_number(parts[1], 1000000, &clock_rate) < 0
            || (count == 3 && parse_number(parts[2], 255, &channels) < 0))
            return 0;
        PyObject *names[] = {str_payload_type, str_encoding, str_clock_rate, str_channels};
        PyObject *values[] = {PyLong_FromUnsignedLongLong(payload_type), text_of(parts[0]),
                              PyLong_FromUnsignedLongLong(clock_rate), PyLong_FromUnsignedLongLong(channels)};
        PyObject *mapping = frozen_value(rtpmap_class, names, values, 4);
        int result = mapping == NULL ? -1 : PyDict_SetItem(media->rtpmaps, values[0], mapping);
        Py_XDECREF(mapping);
        for (int i = 0; i < 4; i++)
            Py_XDECREF(values[i]);
        return result < 0 ? -1 : 1;
    }
    if (equals(name, "fmtp")) {
        const char *space = memchr(value.text, ' ', (size_t)value.length);
        Span payload = {value.text, space == NULL ? value.length : space - value.text};
        Span parameters = {space == NULL ? value.text + value.length : space + 1,
                           space == NULL ? 0 : value.length - payload.length - 1};
        unsigned long long payload_type;
        if (payload.length > 20)
            return 0; /* digits padded with zeros, maybe: sdp.py's */
        if (parse_number(payload, 127, &payload_type) < 0)
            return 1; /* an fmtp for a format that is not RTP: not ours (sdp.py) */
        PyObject *key = PyLong_FromUnsignedLongLong(payload_type);
        PyObject *text = text_of(trimmed(parameters));
        int result = key == NULL || text == NULL ? -1 : PyDict_SetItem(media->fmtps, key, text);
        Py_XDECREF(key);
        Py_XDECREF(text);
        return result < 0 ? -1 : 1;
    }
    if (equals(name, "ptime") || equals(name, "maxptime")) {
        /* A malformed packet time is ignored (sdp.py: we always send 20 ms). */
        Span whole = trimmed(value);
        const char *dot = memchr(whole.text, '.', (size_t)whole.length);
        if (dot != NULL)
            whole.length = dot - whole.text;
        unsigned long long packet_time;
        if (whole.length > 20)
            return 0; /* digits padded with zeros, maybe: sdp.py's */
        if (parse_number(whole, 10000, &packet_time) == 0) {
            if (name.length == 5)
                media->ptime = (long)packet_time;
            else
                media->maxptime = (long)packet_time;
        }
        return 1;
    }
    if (equals(name, "rtcp-mux")) {
        media->rtcp_mux = 1;
        return 1;
    }
    if (equals(name, "rtcp")) {
        /* RFC 3605: a=rtcp:<port> [IN IP4 <address>] */
        Span fields[4];
        int count;
        unsigned long long port;
        Span address = {NULL, -1};
        if (!split_fields(value, fields, 4, &count) || (count != 1 && count != 4)
            || parse_number(fields[0], 65535, &port) < 0 || (count == 4 && !connection_fields(fields + 1, 3, &address)))
            return 0;
        media->rtcp_port = (long)port;
        if (count == 4)
            media->rtcp_address = address; /* a later a=rtcp without one keeps it (sdp.py) */
        return 1;
    }
    if (equals(name, "crypto"))
        return 0; /* sdp.py's (and media/sdes.py's): keys */
    PyObject *key = text_of(name);
    if (key == NULL)
        return -1;
    PyObject *direction = PyDict_GetItemWithError(directions, key);
    Py_DECREF(key);
    if (direction == NULL && PyErr_Occurred())
        return -1;
    if (direction != NULL)
        media->direction = direction;
    return 1; /* any other attribute is skipped */
}

static void media_clear(Media *media)
{
    Py_CLEAR(media->formats);
    Py_CLEAR(media->rtpmaps);
    Py_CLEAR(media->fmtps);
}

/* A new media section from an m= line's value; 0 when faulty, -1 on an error. */
static int media_start(Media *media, Span value, long number)
{
    Span fields[64];
    int count;
    if (!split_fields(value, fields, 64, &count) || count < 4)
        return 0; /* too few fields, or more formats than a trunk lists: sdp.py */
    Span port_text = fields[1];
    const char *slash = memchr(port_text.text, '/', (size_t)port_text.length);
    if (slash != NULL)
        port_text.length = slash - port_text.text;
    unsigned long long port;
    if (parse_number(port_text, 65535, &port) < 0)
        return 0;
    memset(media, 0, sizeof(*media));
    media->media = fields[0];
    media->protocol = fields[2];
    media->port = (long)port;
    media->line = number;
    media->connection.length = -1;
    media->ptime = media->maxptime = media->rtcp_port = -1;
    media->rtcp_address.length = -1;
    media->formats = PyTuple_New(count - 3);
    media->rtpmaps = PyDict_New();
    media->fmtps = PyDict_New();
    if (media->formats == NULL || media->rtpmaps == NULL || media->fmtps == NULL)
        return -1;
    for (int i = 3; i < count; i++) {
        PyObject *format = text_of(fields[i]);
        if (format == NULL)
            return -1;
        PyTuple_SET_ITEM(media->formats, i - 3, format);
    }
    return 1;
}

static PyObject *optional_number(long value)
{
    return value < 0 ? Py_NewRef(Py_None) : PyLong_FromLong(value);
}

static PyObject *media_build(Media *media, Span session_address, PyObject *session_direction)
{
    Span address = media->connection.length > 0 ? media->connection : session_address;
    PyObject *direction = media->direction != NULL ? media->direction
                          : session_direction != NULL ? session_direction : sendrecv;
    PyObject *names[] = {str_media, str_port, str_protocol, str_formats, str_connection_address, str_rtpmaps,
                         str_fmtps, str_ptime, str_maxptime, str_direction, str_rtcp_port, str_rtcp_address,
                         str_rtcp_mux, str_crypto, str_line};
    PyObject *values[] = {text_of(media->media), PyLong_FromLong(media->port), text_of(media->protocol),
                          Py_NewRef(media->formats),
                          address.length < 0 ? Py_NewRef(Py_None) : text_of(address),
                          Py_NewRef(media->rtpmaps), Py_NewRef(media->fmtps), optional_number(media->ptime),
                          optional_number(media->maxptime), Py_NewRef(direction), optional_number(media->rtcp_port),
                          media->rtcp_address.length < 0 ? Py_NewRef(Py_None) : text_of(media->rtcp_address),
                          PyBool_FromLong(media->rtcp_mux), Py_NewRef(empty_tuple),
                          PyLong_FromLong(media->line)};
    PyObject *result = frozen_value(media_class, names, values, 15);
    for (int i = 0; i < 15; i++)
        Py_XDECREF(values[i]);
    return result;
}

#define MAX_MEDIA 16 /* m= sections a body may have here; more: sdp.py */

static PyObject *sdp_parse(PyObject *module, PyObject *arg)
{
    if (session_class == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "eko_rtp.media._sdp: bind() was not called");
        return NULL;
    }
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "parse(body: bytes)");
        return NULL;
    }
    const char *body = PyBytes_AS_STRING(arg);
    Py_ssize_t size = PyBytes_GET_SIZE(arg);
    if (size > max_size)
        return Py_NewRef(Py_None); /* sdp.py refuses it, naming the limit */
    Media media[MAX_MEDIA];
    int sections = 0, saw_version = 0;
    PyObject *origin = Py_NewRef(Py_None), *result = NULL;
    Span session_address = {NULL, -1};
    PyObject *session_direction = NULL; /* borrowed */
    long number = 0;
    Py_ssize_t start = 0;
    while (start <= size) {
        const char *newline = memchr(body + start, '\n', (size_t)(size - start));
        Py_ssize_t end = newline == NULL ? size : newline - body;
        number++;
        Span line = {body + start, end - start};
        start = end + 1;
        while (line.length > 0 && line.text[line.length - 1] == '\r')
            line.length--;
        if (line.length == 0)
            continue; /* blank lines, the one after the last CRLF too */
        for (Py_ssize_t i = 0; i < line.length; i++) {
            unsigned char c = (unsigned char)line.text[i];
            if ((c < 0x20 && c != '\t') || c >= 0x7f)
                goto outside; /* sdp.py judges it */
        }
        char kind = line.text[0];
        if (line.length < 2 || line.text[1] != '=' || !((kind >= 'a' && kind <= 'z') || (kind >= 'A' && kind <= 'Z')))
            goto outside;
        Span value = {line.text + 2, line.length - 2};
        if (!saw_version) {
            if (kind != 'v' || !equals(trimmed(value), "0"))
                goto outside;
            saw_version = 1;
            continue;
        }
        Media *current = sections > 0 ? &media[sections - 1] : NULL;
        if (kind == 'm') {
            if (sections == MAX_MEDIA)
                goto outside;
            int started = media_start(&media[sections], value, number);
            if (started != 0)
                sections++; /* its objects are released below, even on an error */
            if (started < 0)
                goto done;
            if (started == 0)
                goto outside;
        }
        else if (kind == 'c') {
            Span address;
            if (!connection(value, &address))
                goto outside;
            if (current == NULL)
                session_address = address;
            else
                current->connection = address;
        }
        else if (kind == 'o' && current == NULL) {
            Span fields[6];
            int count;
            unsigned long long session_id, version;
            if (!split_fields(value, fields, 6, &count) || count != 6 || !equals(fields[3], "IN")
                || parse_number(fields[1], ~0ULL, &session_id) < 0 || parse_number(fields[2], ~0ULL, &version) < 0)
                goto outside;
            PyObject *names[] = {str_username, str_session_id, str_version, str_address};
            PyObject *values[] = {text_of(fields[0]), PyLong_FromUnsignedLongLong(session_id),
                                  PyLong_FromUnsignedLongLong(version), text_of(fields[5])};
            PyObject *made = frozen_value(origin_class, names, values, 4);
            for (int i = 0; i < 4; i++)
                Py_XDECREF(values[i]);
            if (made == NULL)
                goto done;
            Py_SETREF(origin, made);
        }
        else if (kind == 'a') {
            const char *colon = memchr(value.text, ':', (size_t)value.length);
            Span name = {value.text, colon == NULL ? value.length : colon - value.text};
            Span attribute_value = {colon == NULL ? value.text + value.length : colon + 1,
                                    colon == NULL ? 0 : value.length - name.length - 1};
            if (current != NULL) {
                int taken = attribute(current, name, attribute_value);
                if (taken < 0)
                    goto done;
                if (taken == 0)
                    goto outside;
            }
            else {
                PyObject *key = text_of(name);
                if (key == NULL)
                    goto done;
                PyObject *direction = PyDict_GetItemWithError(directions, key);
                Py_DECREF(key);
                if (direction == NULL && PyErr_Occurred())
                    goto done;
                if (direction != NULL)
                    session_direction = direction;
            }
        }
        /* Any other line type is skipped, as sdp.py does. */
    }
    if (!saw_version)
        goto outside;
    PyObject *built = PyTuple_New(sections);
    if (built == NULL)
        goto done;
    for (int i = 0; i < sections; i++) {
        PyObject *description = media_build(&media[i], session_address, session_direction);
        if (description == NULL) {
            Py_DECREF(built);
            goto done;
        }
        PyTuple_SET_ITEM(built, i, description);
    }
    PyObject *names[] = {str_origin, str_media};
    PyObject *values[] = {origin, built};
    result = frozen_value(session_class, names, values, 2);
    Py_DECREF(built);
    goto done;
outside:
    result = Py_NewRef(Py_None);
done:
    for (int i = 0; i < sections; i++)
        media_clear(&media[i]);
    Py_DECREF(origin);
    return result;
}

static PyObject *sdp_bind(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7 || !PyType_Check(args[0]) || !PyType_Check(args[1]) || !PyType_Check(args[2])
        || !PyType_Check(args[3]) || !PyDict_CheckExact(args[4])) {
        PyErr_SetString(PyExc_TypeError, "bind(SessionDescription, MediaDescription, SdpOrigin, RtpMap,"
                                         " directions: dict, sendrecv, max_size: int)");
        return NULL;
    }
    Py_ssize_t size = PyLong_AsSsize_t(args[6]);
    if (size == -1 && PyErr_Occurred())
        return NULL;
    Py_XSETREF(session_class, Py_NewRef(args[0]));
    Py_XSETREF(media_class, Py_NewRef(args[1]));
    Py_XSETREF(origin_class, Py_NewRef(args[2]));
    Py_XSETREF(rtpmap_class, Py_NewRef(args[3]));
    Py_XSETREF(directions, Py_NewRef(args[4]));
    Py_XSETREF(sendrecv, Py_NewRef(args[5]));
    max_size = size;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"parse", (PyCFunction)sdp_parse, METH_O,
     "parse(body): the SessionDescription of a plain body, or None for sdp.py to parse."},
    {"bind", (PyCFunction)(void (*)(void))sdp_bind, METH_FASTCALL,
     "bind(SessionDescription, MediaDescription, SdpOrigin, RtpMap, directions, sendrecv, max_size):"
     " sdp.py's classes, directions and limit."},
    {NULL},
};

static struct PyModuleDef sdp_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "eko_rtp.media._sdp",
    .m_doc = "Compiled parse of a plain SDP body (eko_rtp/media/sdp.py's twin).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__sdp(void)
{
    static const CoreName names[] = {
        {&str_origin, "origin"}, {&str_media, "media"}, {&str_username, "username"},
        {&str_session_id, "session_id"}, {&str_version, "version"}, {&str_address, "address"},
        {&str_port, "port"}, {&str_protocol, "protocol"}, {&str_formats, "formats"},
        {&str_connection_address, "connection_address"}, {&str_rtpmaps, "rtpmaps"}, {&str_fmtps, "fmtps"},
        {&str_ptime, "ptime"}, {&str_maxptime, "maxptime"}, {&str_direction, "direction"},
        {&str_rtcp_port, "rtcp_port"}, {&str_rtcp_address, "rtcp_address"}, {&str_rtcp_mux, "rtcp_mux"},
        {&str_crypto, "crypto"}, {&str_line, "line"}, {&str_payload_type, "payload_type"},
        {&str_encoding, "encoding"}, {&str_clock_rate, "clock_rate"}, {&str_channels, "channels"},
    };
    if (values_start(names, sizeof(names) / sizeof(names[0])) < 0)
        return NULL;
    return PyModule_Create(&sdp_module);
}
