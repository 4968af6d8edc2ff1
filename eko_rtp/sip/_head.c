/* The head of a SIP message, scanned in C: the compiled twin of the first half of
 * eko_rtp/sip/message.py's parse (its _split_head, the UTF-8 decoding, _header_lines,
 * _parse_fields, _frame_body and the Content-Length line dropped from the headers),
 * for the messages a trunk sends: nothing folded, nothing but printable ASCII.
 *
 * Why: an INVITE's parse runs once per call, cold (its code and data have left the
 * CPU's caches since the last call), and the lines, names and values it walks cost a
 * few dozen Python calls and the objects between them (docs/BENCHMARKS.md, twentieth
 * session). Here one pass over the bytes makes the start line's parts, the header
 * lines as (name, value) pairs with names canonical, the look-up index Headers keeps,
 * and the body framed by Content-Length.
 *
 * scan() answers None for anything outside that subset, and message.py then parses
 * the message in Python, which also says what is wrong with it: a folded line, a byte
 * outside printable ASCII (or a lone CR or LF), a header line that is not a token, a
 * colon and a value, a line or line count past message.py's limits, a Content-Length
 * that is absent over a stream, repeated, not digits or larger than what came, a
 * start line with more or other spaces than one between its parts, or a version
 * other than SIP/2.0 as written. So the twin never has to say why, and for what it
 * accepts it gives exactly what the Python path gives (tests/test_sip_head_scan.py
 * compares them). The rest of the parse (Via, From, To, Call-ID, CSeq and the
 * required headers) stays in message.py, on the headers made here.
 *
 * Cost: linear in the datagram, every loop bounded by its length; it reads at most
 * the limits message.py passes to bind(). */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *canonical_name; /* message.canonical_name */
static PyObject *key_of;         /* message._KEY_OF: a well-known spelling -> its index key */
static PyObject *content_length_key; /* "content-length" */
static Py_ssize_t max_lines = -1, max_length = -1;

/* RFC 3261 §25.1 token characters (headers.TOKEN). */
static int is_token_char(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return 1;
    switch (c) {
    case '.': case '!': case '%': case '*': case '_': case '+': case '`': case '\'': case '~': case '-':
        return 1;
    default:
        return 0;
    }
}

static int is_token(const char *text, Py_ssize_t length)
{
    if (length == 0)
        return 0;
    for (Py_ssize_t i = 0; i < length; i++)
        if (!is_token_char((unsigned char)text[i]))
            return 0;
    return 1;
}

/* A str of ASCII bytes (the scan has checked they are). */
static PyObject *ascii(const char *text, Py_ssize_t length)
{
    PyObject *result = PyUnicode_New(length, 127);
    if (result != NULL)
        memcpy(PyUnicode_DATA(result), text, (size_t)length);
    return result;
}

static PyObject *ascii_lower(PyObject *text)
{
    Py_ssize_t length = PyUnicode_GET_LENGTH(text);
    PyObject *result = PyUnicode_New(length, 127);
    if (result == NULL)
        return NULL;
    const Py_UCS1 *from = PyUnicode_1BYTE_DATA(text);
    Py_UCS1 *to = PyUnicode_1BYTE_DATA(result);
    for (Py_ssize_t i = 0; i < length; i++)
        to[i] = (from[i] >= 'A' && from[i] <= 'Z') ? (Py_UCS1)(from[i] + 32) : from[i];
    return result;
}

/* Adds value under key as Headers' index does: a str for one line, a list for more. */
static int index_add(PyObject *index, PyObject *key, PyObject *value)
{
    PyObject *prior = PyDict_GetItemWithError(index, key);
    if (prior == NULL) {
        if (PyErr_Occurred())
            return -1;
        return PyDict_SetItem(index, key, value);
    }
    if (PyList_CheckExact(prior))
        return PyList_Append(prior, value);
    PyObject *both = PyList_New(2);
    if (both == NULL)
        return -1;
    PyList_SET_ITEM(both, 0, Py_NewRef(prior));
    PyList_SET_ITEM(both, 1, Py_NewRef(value));
    int failed = PyDict_SetItem(index, key, both);
    Py_DECREF(both);
    return failed;
}

/* The start line's parts: (True, version, status, reason) of a response or (False,
 * method, uri, version) of a request, as a 4-tuple's first items; 0 when outside the
 * subset, -1 on an error (set). */
static int start_line(const char *line, Py_ssize_t length, PyObject **parts)
{
    static const char version[] = "SIP/2.0";
    const Py_ssize_t version_length = sizeof(version) - 1;
    if (length >= 4 && (line[0] | 32) == 's' && (line[1] | 32) == 'i' && (line[2] | 32) == 'p' && line[3] == '/') {
        /* A response: "SIP/2.0 NNN reason" (message.py: [1-6][0-9][0-9], the reason as it is). */
        if (length < version_length + 4 || memcmp(line, version, (size_t)version_length) != 0
            || line[version_length] != ' ')
            return 0;
        const char *status = line + version_length + 1;
        if (status[0] < '1' || status[0] > '6' || status[1] < '0' || status[1] > '9' || status[2] < '0'
            || status[2] > '9')
            return 0;
        Py_ssize_t after = version_length + 4;
        if (after < length && line[after] != ' ')
            return 0;
        Py_ssize_t reason_start = after < length ? after + 1 : length;
        parts[0] = Py_NewRef(Py_True);
        parts[1] = ascii(line, version_length);
        parts[2] = PyLong_FromLong((status[0] - '0') * 100 + (status[1] - '0') * 10 + (status[2] - '0'));
        parts[3] = ascii(line + reason_start, length - reason_start);
    }
    else {
        /* A request: exactly "METHOD SP uri SP SIP/2.0" (message.py splits on
         * whitespace and refuses any other spacing). */
        const char *space = memchr(line, ' ', (size_t)length);
        if (space == NULL || memchr(line, '\t', (size_t)length) != NULL)
            return 0; /* message.py splits on any whitespace: a tab is its to judge */
        Py_ssize_t method_length = space - line;
        Py_ssize_t uri_start = method_length + 1;
        const char *second = memchr(line + uri_start, ' ', (size_t)(length - uri_start));
        if (second == NULL)
            return 0;
        Py_ssize_t uri_length = second - (line + uri_start);
        Py_ssize_t version_start = uri_start + uri_length + 1;
        if (!is_token(line, method_length) || uri_length == 0 || length - version_start != version_length
            || memcmp(line + version_start, version, (size_t)version_length) != 0)
            return 0;
        parts[0] = Py_NewRef(Py_False);
        parts[1] = ascii(line, method_length);
        parts[2] = ascii(line + uri_start, uri_length);
        parts[3] = ascii(line + version_start, version_length);
    }
    if (parts[1] == NULL || parts[2] == NULL || parts[3] == NULL)
        return -1;
    return 1;
}

/* One header line "name: value" into fields and index; 0 when outside the subset,
 * 1 done, 2 a Content-Length line (its value's bounds in *value_at, *value_length), -1
 * on an error. */
static int header_line(const char *line, Py_ssize_t length, PyObject *fields, PyObject *index,
                       Py_ssize_t *value_at, Py_ssize_t *value_length)
{
    if (length > max_length || line[0] == ' ' || line[0] == '\t')
        return 0; /* too long, or folded (§7.3.1): message.py's */
    const char *colon = memchr(line, ':', (size_t)length);
    if (colon == NULL)
        return 0;
    Py_ssize_t name_end = colon - line;
    while (name_end > 0 && (line[name_end - 1] == ' ' || line[name_end - 1] == '\t'))
        name_end--;
    if (!is_token(line, name_end))
        return 0;
    Py_ssize_t start = colon - line + 1, end = length;
    while (start < end && (line[start] == ' ' || line[start] == '\t'))
        start++;
    while (end > start && (line[end - 1] == ' ' || line[end - 1] == '\t'))
        end--;
    PyObject *name = ascii(line, name_end);
    if (name == NULL)
        return -1;
    /* A well-known spelling is its own canonical name (message._KEY_OF); any other
     * goes through canonical_name, which expands compact forms. */
    PyObject *key = PyDict_GetItemWithError(key_of, name);
    PyObject *canonical;
    if (key != NULL) {
        canonical = name;
        Py_INCREF(key);
    }
    else {
        if (PyErr_Occurred()) {
            Py_DECREF(name);
            return -1;
        }
        canonical = PyObject_CallOneArg(canonical_name, name);
        Py_DECREF(name);
        if (canonical == NULL)
            return -1;
        if (!PyUnicode_CheckExact(canonical) || !PyUnicode_IS_ASCII(canonical)) {
            Py_DECREF(canonical);
            return 0;
        }
        key = PyDict_GetItemWithError(key_of, canonical);
        if (key != NULL)
            Py_INCREF(key);
        else if (PyErr_Occurred() || (key = ascii_lower(canonical)) == NULL) {
            Py_DECREF(canonical);
            return -1;
        }
    }
    int result;
    int equal = PyUnicode_Compare(key, content_length_key);
    if (equal == -1 && PyErr_Occurred())
        result = -1;
    else if (equal == 0) {
        *value_at = start;
        *value_length = end - start;
        result = 2;
    }
    else {
        PyObject *value = ascii(line + start, end - start);
        PyObject *pair = value == NULL ? NULL : PyTuple_Pack(2, canonical, value);
        result = pair != NULL && PyList_Append(fields, pair) == 0 && index_add(index, key, value) == 0 ? 1 : -1;
        Py_XDECREF(pair);
        Py_XDECREF(value);
    }
    Py_DECREF(key);
    Py_DECREF(canonical);
    return result;
}

static PyObject *head_scan(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "scan(data: bytes, limit: int, datagram: bool)");
        return NULL;
    }
    if (canonical_name == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "eko_rtp.sip._head: bind() was not called");
        return NULL;
    }
    Py_ssize_t limit = PyLong_AsSsize_t(args[1]);
    if (limit == -1 && PyErr_Occurred())
        return NULL;
    int datagram = PyObject_IsTrue(args[2]);
    if (datagram < 0)
        return NULL;
    const char *data = PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t at = 0;
    while (at < size && (data[at] == '\r' || data[at] == '\n'))
        at++; /* §7.5: CRLFs before the start line are ignored */
    const char *head = data + at;
    Py_ssize_t available = size - at;

    /* One pass: every byte printable ASCII or HT, lines ended by CRLF, up to the
     * empty line. Each line is handled as it ends, so nothing is read twice. */
    PyObject *fields = PyList_New(0), *index = PyDict_New(), *result = NULL;
    PyObject *parts[4] = {NULL, NULL, NULL, NULL};
    if (fields == NULL || index == NULL)
        goto done;
    Py_ssize_t line_start = 0, lines = 0, length_at = -1, length_size = 0;
    Py_ssize_t head_length = -1;
    for (Py_ssize_t i = 0; i < available; i++) {
        unsigned char c = (unsigned char)head[i];
        if (c >= 0x20 && c < 0x7f)
            continue;
        if (c == '\t')
            continue;
        if (c != '\r' || i + 1 >= available || head[i + 1] != '\n')
            goto outside; /* a control byte, a lone CR or LF, or a byte past ASCII */
        Py_ssize_t line_length = i - line_start;
        if (line_length == 0) {
            if (lines == 0)
                goto outside; /* cannot happen after the CRLFs skipped above */
            head_length = line_start - 2; /* the head ends before the "\r\n\r\n" */
            break;
        }
        if (++lines > max_lines + 1)
            goto outside; /* message.py refuses it 513, naming the limit */
        const char *line = head + line_start;
        if (lines == 1) {
            int started = start_line(line, line_length, parts);
            if (started <= 0) {
                if (started < 0)
                    goto done;
                goto outside;
            }
        }
        else {
            Py_ssize_t value_at = 0, value_length = 0;
            int kind = header_line(line, line_length, fields, index, &value_at, &value_length);
            if (kind < 0)
                goto done;
            if (kind == 0)
                goto outside;
            if (kind == 2) {
                if (length_at >= 0)
                    goto outside; /* repeated: message.py compares them */
                length_at = line_start + value_at;
                length_size = value_length;
            }
        }
        line_start = i + 2;
        i++; /* past the LF */
    }
    if (head_length < 0)
        goto outside; /* no empty line: message.py says so */
    Py_ssize_t body_at = head_length + 4;
    Py_ssize_t rest = available - body_at;
    Py_ssize_t body_length;
    if (length_at < 0) {
        if (!datagram)
            goto outside; /* §18.3: required over a stream */
        body_length = rest;
    }
    else {
        if (length_size == 0 || length_size > 10)
            goto outside;
        body_length = 0;
        for (Py_ssize_t i = 0; i < length_size; i++) {
            char digit = head[length_at + i];
            if (digit < '0' || digit > '9')
                goto outside;
            body_length = body_length * 10 + (digit - '0');
        }
        if (body_length > rest)
            goto outside;
    }
    if (body_at + body_length > limit)
        goto outside; /* 513: message.py */
    PyObject *field_tuple = PyList_AsTuple(fields);
    PyObject *body = field_tuple == NULL ? NULL : PyBytes_FromStringAndSize(head + body_at, body_length);
    if (body != NULL)
        result = PyTuple_Pack(7, parts[0], parts[1], parts[2], parts[3], field_tuple, index, body);
    Py_XDECREF(field_tuple);
    Py_XDECREF(body);
    goto done;
outside:
    result = Py_NewRef(Py_None);
done:
    for (int i = 0; i < 4; i++)
        Py_XDECREF(parts[i]);
    Py_XDECREF(fields);
    Py_XDECREF(index);
    return result;
}

static PyObject *head_bind(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyCallable_Check(args[0]) || !PyDict_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "bind(canonical_name, key_of: dict, max_lines: int, max_length: int)");
        return NULL;
    }
    Py_ssize_t lines = PyLong_AsSsize_t(args[2]), length = PyLong_AsSsize_t(args[3]);
    if ((lines == -1 || length == -1) && PyErr_Occurred())
        return NULL;
    if (lines < 1 || length < 1) {
        PyErr_SetString(PyExc_ValueError, "bind(): the limits must be positive");
        return NULL;
    }
    Py_XSETREF(canonical_name, Py_NewRef(args[0]));
    Py_XSETREF(key_of, Py_NewRef(args[1]));
    max_lines = lines;
    max_length = length;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"scan", (PyCFunction)(void (*)(void))head_scan, METH_FASTCALL,
     "scan(data, limit, datagram): (is_response, first, second, third, fields, index, body) of a plain"
     " message, or None for message.py to parse."},
    {"bind", (PyCFunction)(void (*)(void))head_bind, METH_FASTCALL,
     "bind(canonical_name, key_of, max_lines, max_length): message.py's names and limits."},
    {NULL},
};

static struct PyModuleDef head_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "eko_rtp.sip._head",
    .m_doc = "Compiled scan of a plain SIP message's head (eko_rtp/sip/message.py's twin).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__head(void)
{
    if (content_length_key == NULL && (content_length_key = PyUnicode_InternFromString("content-length")) == NULL)
        return NULL;
    return PyModule_Create(&head_module);
}
