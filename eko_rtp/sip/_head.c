/* The head of a SIP message, scanned in C: the compiled twin of eko_rtp/sip/message.py's
 * parse (its _split_head, the UTF-8 decoding, _header_lines, _parse_fields, _frame_body,
 * the Content-Length line dropped from the headers, then _parse_addressing and
 * _check_required with headers.py's and uri.py's parsers) for the messages a trunk
 * sends: nothing folded, nothing but printable ASCII, plain values.
 *
 * Why: an INVITE's parse runs once per call, cold (its code and data have left the
 * CPU's caches since the last call), and the lines, names, values, URIs and parameters
 * it walks cost a hundred-odd Python calls and the objects between them
 * (docs/BENCHMARKS.md, twentieth session). Here one pass over the bytes makes the
 * start line's parts, the header lines as (name, value) pairs with names canonical,
 * the look-up index Headers keeps and the body framed by Content-Length; then, when
 * Via, From, To, Call-ID, CSeq, Max-Forwards and the Request-URI are plain and pass
 * every check, their typed values (uri.Uri, headers.NameAddr, headers.Via,
 * headers.CSeq), made field by field as their constructors would.
 *
 * scan() answers None for a head outside that subset, and message.py then parses the
 * message in Python, which also says what is wrong with it: a folded line, a byte
 * outside printable ASCII (or a lone CR or LF), a header line that is not a token, a
 * colon and a value, a line or line count past message.py's limits, a Content-Length
 * that is absent over a stream, repeated, not digits or larger than what came, a
 * start line with more or other spaces than one between its parts, or a version
 * other than SIP/2.0 as written. Its last item, the typed fields, is None in the same
 * way: message.py then parses them from the scanned headers. So the twin never has to
 * say why, and for what it accepts it gives exactly what the Python path gives
 * (tests/test_sip_head_scan.py compares them).
 *
 * Cost: linear in the datagram, every loop bounded by its length; it reads at most
 * the limits message.py passes to bind(). */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "../_values.h"

static PyObject *canonical_name; /* message.canonical_name */
static PyObject *key_of;         /* message._KEY_OF: a well-known spelling -> its index key */
static PyObject *content_length_key; /* "content-length" */
static Py_ssize_t max_lines = -1, max_length = -1;
/* The typed fields' classes (uri.Uri, headers.NameAddr, headers.Via, headers.CSeq) and
 * their limits (uri.MAX_PARAMETERS, headers.MAX_LIST_ELEMENTS). */
static PyObject *uri_class, *name_addr_class, *via_class, *cseq_class;
static Py_ssize_t max_parameters = -1, max_list_elements = -1;
static PyObject *key_via, *key_from, *key_to, *key_call_id, *key_cseq, *key_max_forwards;
static PyObject *str_scheme, *str_user, *str_password, *str_host, *str_port, *str_parameters, *str_headers,
    *str_display_name, *str_uri, *str_transport, *str_number, *str_method, *str_sip, *str_sips;

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

/* An ASCII text lower-cased (header names, hosts). */
static PyObject *lower_ascii(const char *text, Py_ssize_t length)
{
    PyObject *result = PyUnicode_New(length, 127);
    if (result == NULL)
        return NULL;
    Py_UCS1 *to = PyUnicode_1BYTE_DATA(result);
    for (Py_ssize_t i = 0; i < length; i++)
        to[i] = (text[i] >= 'A' && text[i] <= 'Z') ? (Py_UCS1)(text[i] + 32) : (Py_UCS1)text[i];
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
        parts[1] = ascii_text(line, version_length);
        parts[2] = PyLong_FromLong((status[0] - '0') * 100 + (status[1] - '0') * 10 + (status[2] - '0'));
        parts[3] = ascii_text(line + reason_start, length - reason_start);
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
        parts[1] = ascii_text(line, method_length);
        parts[2] = ascii_text(line + uri_start, uri_length);
        parts[3] = ascii_text(line + version_start, version_length);
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
    PyObject *name = ascii_text(line, name_end);
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
        else if (PyErr_Occurred()
                 || (key = lower_ascii((const char *)PyUnicode_1BYTE_DATA(canonical),
                                       PyUnicode_GET_LENGTH(canonical))) == NULL) {
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
        PyObject *value = ascii_text(line + start, end - start);
        PyObject *pair = value == NULL ? NULL : PyTuple_Pack(2, canonical, value);
        result = pair != NULL && PyList_Append(fields, pair) == 0 && index_add(index, key, value) == 0 ? 1 : -1;
        Py_XDECREF(pair);
        Py_XDECREF(value);
    }
    Py_DECREF(key);
    Py_DECREF(canonical);
    return result;
}

/* ---- the typed fields of a plain message (message.py's _parse_addressing and
 * _check_required, with headers.py's and uri.py's parsers), for plain values only:
 * no quoted-pair, %-escape, IPv6 host, URI header, tel: URI, comma-separated list or
 * whitespace inside a parameter list. Each returns a new reference, Py_None (a new
 * reference too) when the value is outside that subset or faulty (message.py then
 * parses everything in Python and says what is wrong), or NULL on an error. */

static int is_alnum(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static int has_any(const char *text, Py_ssize_t length, const char *set)
{
    for (Py_ssize_t i = 0; i < length; i++)
        if (strchr(set, text[i]) != NULL && text[i] != '\0')
            return 1;
    return 0;
}

/* Digits only, 1 to max_digits of them: their value, else -1. */
static long long digits_value(const char *text, Py_ssize_t length, Py_ssize_t max_digits)
{
    if (length < 1 || length > max_digits)
        return -1;
    long long value = 0;
    for (Py_ssize_t i = 0; i < length; i++) {
        if (text[i] < '0' || text[i] > '9')
            return -1;
        value = value * 10 + (text[i] - '0');
    }
    return value;
}

/* uri.parse_host_port for a host name or IPv4 address: 1 with *host (lower-cased) and
 * *port (None or an int) set, 0 outside or faulty, -1 on an error. */
static int host_port(const char *text, Py_ssize_t length, PyObject **host, PyObject **port)
{
    const char *colon = memchr(text, ':', (size_t)length);
    Py_ssize_t host_length = colon == NULL ? length : colon - text;
    /* uri._HOSTNAME: alphanumerics, dots and hyphens, starting and ending with an
     * alphanumeric, maybe one final dot. */
    Py_ssize_t core = host_length;
    if (core > 0 && text[core - 1] == '.')
        core--;
    if (core < 1 || !is_alnum((unsigned char)text[0]) || !is_alnum((unsigned char)text[core - 1]))
        return 0;
    for (Py_ssize_t i = 0; i < core; i++)
        if (!is_alnum((unsigned char)text[i]) && text[i] != '.' && text[i] != '-')
            return 0;
    long long number = -1;
    if (colon != NULL) {
        number = digits_value(colon + 1, length - host_length - 1, 5);
        if (number < 1 || number > 65535)
            return 0;
    }
    *host = lower_ascii(text, host_length);
    *port = number < 0 ? Py_NewRef(Py_None) : PyLong_FromLongLong(number);
    if (*host == NULL || *port == NULL) {
        Py_CLEAR(*host);
        Py_CLEAR(*port);
        return -1;
    }
    return 1;
}

/* ";"-separated parameters (the text after the first ';'): headers.py's
 * _parse_header_parameters when header is 1 (a value is needed after '=', the name is
 * a token), uri.py's _parse_parameters when 0 (any name but empty, maybe an empty
 * value). A tuple, Py_None outside or faulty, NULL on an error. */
static PyObject *parameters(const char *text, Py_ssize_t length, int header)
{
    if (has_any(text, length, header ? " \t\"" : " \t%"))
        return Py_NewRef(Py_None);
    PyObject *items = PyList_New(0);
    if (items == NULL)
        return NULL;
    Py_ssize_t start = 0, count = 0;
    while (1) {
        const char *semicolon = memchr(text + start, ';', (size_t)(length - start));
        Py_ssize_t end = semicolon == NULL ? length : semicolon - text;
        if (++count > max_parameters || end == start)
            goto outside; /* too many, or an empty one: 400 */
        const char *item = text + start;
        Py_ssize_t item_length = end - start;
        const char *equals = memchr(item, '=', (size_t)item_length);
        Py_ssize_t key_length = equals == NULL ? item_length : equals - item;
        if (header ? !is_token(item, key_length) : key_length == 0)
            goto outside;
        if (header && equals != NULL && equals == item + item_length - 1)
            goto outside; /* "name=" with no value: 400 */
        PyObject *key = ascii_text(item, key_length);
        PyObject *value = equals == NULL ? Py_NewRef(Py_None)
                                         : ascii_text(equals + 1, item_length - key_length - 1);
        PyObject *pair = key == NULL || value == NULL ? NULL : PyTuple_Pack(2, key, value);
        Py_XDECREF(key);
        Py_XDECREF(value);
        if (pair == NULL || PyList_Append(items, pair) < 0) {
            Py_XDECREF(pair);
            Py_DECREF(items);
            return NULL;
        }
        Py_DECREF(pair);
        if (semicolon == NULL)
            break;
        start = end + 1;
    }
    PyObject *result = PyList_AsTuple(items);
    Py_DECREF(items);
    return result;
outside:
    Py_DECREF(items);
    return Py_NewRef(Py_None);
}

/* uri.parse_uri for a plain sip: or sips: URI. */
static PyObject *parse_uri(const char *text, Py_ssize_t length)
{
    PyObject *scheme;
    Py_ssize_t at;
    if (length > 4 && (text[0] | 32) == 's' && (text[1] | 32) == 'i' && (text[2] | 32) == 'p' && text[3] == ':') {
        scheme = str_sip;
        at = 4;
    }
    else if (length > 5 && (text[0] | 32) == 's' && (text[1] | 32) == 'i' && (text[2] | 32) == 'p'
             && (text[3] | 32) == 's' && text[4] == ':') {
        scheme = str_sips;
        at = 5;
    }
    else
        return Py_NewRef(Py_None); /* tel:, another scheme or none: uri.py */
    const char *rest = text + at;
    Py_ssize_t rest_length = length - at;
    if (has_any(rest, rest_length, " \t?%[")) /* whitespace, URI headers, escapes, IPv6 */
        return Py_NewRef(Py_None);
    PyObject *user = Py_NewRef(Py_None), *password = Py_NewRef(Py_None);
    for (Py_ssize_t i = rest_length - 1; i >= 0; i--) {
        if (rest[i] != '@')
            continue;
        const char *colon = memchr(rest, ':', (size_t)i);
        Py_ssize_t user_length = colon == NULL ? i : colon - rest;
        if (user_length == 0) {
            Py_DECREF(user);
            Py_DECREF(password);
            return Py_NewRef(Py_None); /* an empty user: 400 */
        }
        Py_SETREF(user, ascii_text(rest, user_length));
        if (colon != NULL)
            Py_SETREF(password, ascii_text(colon + 1, i - user_length - 1));
        rest += i + 1;
        rest_length -= i + 1;
        break;
    }
    PyObject *result = NULL, *host = NULL, *port = NULL, *params = NULL;
    if (user == NULL || password == NULL)
        goto done;
    const char *semicolon = memchr(rest, ';', (size_t)rest_length);
    Py_ssize_t host_length = semicolon == NULL ? rest_length : semicolon - rest;
    int parsed = host_port(rest, host_length, &host, &port);
    if (parsed < 0)
        goto done;
    if (parsed == 0) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    params = semicolon == NULL ? Py_NewRef(empty_tuple)
                               : parameters(semicolon + 1, rest_length - host_length - 1, 0);
    if (params == NULL)
        goto done;
    if (params == Py_None) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    PyObject *names[] = {str_scheme, str_user, str_password, str_host, str_port, str_parameters, str_headers};
    PyObject *values[] = {scheme, user, password, host, port, params, empty_tuple};
    result = frozen_value(uri_class, names, values, 7);
done:
    Py_XDECREF(user);
    Py_XDECREF(password);
    Py_XDECREF(host);
    Py_XDECREF(port);
    Py_XDECREF(params);
    return result;
}

static PyObject *make_name_addr(PyObject *display_name, PyObject *uri, PyObject *params)
{
    PyObject *result;
    if (display_name == NULL || uri == NULL || params == NULL)
        result = NULL;
    else if (uri == Py_None || params == Py_None)
        result = Py_NewRef(Py_None);
    else {
        PyObject *names[] = {str_display_name, str_uri, str_parameters};
        PyObject *values[] = {display_name, uri, params};
        result = frozen_value(name_addr_class, names, values, 3);
    }
    Py_XDECREF(display_name);
    Py_XDECREF(uri);
    Py_XDECREF(params);
    return result;
}

static void trim(const char **text, Py_ssize_t *length)
{
    while (*length > 0 && (**text == ' ' || **text == '\t')) {
        (*text)++;
        (*length)--;
    }
    while (*length > 0 && ((*text)[*length - 1] == ' ' || (*text)[*length - 1] == '\t'))
        (*length)--;
}

/* headers.parse_name_addr (From, To). */
static PyObject *parse_name_addr(PyObject *value)
{
    const char *text = PyUnicode_AsUTF8AndSize(value, NULL);
    if (text == NULL)
        return NULL;
    Py_ssize_t length = PyUnicode_GET_LENGTH(value);
    if (has_any(text, length, "\\,"))
        return Py_NewRef(Py_None); /* quoted-pairs, or a list: headers.py */
    PyObject *display_name = Py_NewRef(Py_None);
    const char *angle;
    if (length > 0 && text[0] == '"') {
        const char *close = memchr(text + 1, '"', (size_t)(length - 1));
        if (close == NULL) {
            Py_DECREF(display_name);
            return Py_NewRef(Py_None);
        }
        Py_SETREF(display_name, ascii_text(text + 1, close - text - 1));
        angle = close + 1;
        while (angle < text + length && (*angle == ' ' || *angle == '\t'))
            angle++;
        if (angle == text + length || *angle != '<') {
            Py_XDECREF(display_name);
            return Py_NewRef(Py_None); /* a display name without <URI>: 400 */
        }
    }
    else if ((angle = memchr(text, '<', (size_t)length)) != NULL) {
        if (memchr(text, '"', (size_t)(angle - text)) != NULL) {
            Py_DECREF(display_name);
            return Py_NewRef(Py_None);
        }
        /* The words before '<', each run of whitespace made one space (headers.py). */
        char words[256];
        Py_ssize_t used = 0;
        for (const char *c = text; c < angle; c++) {
            if (*c == ' ' || *c == '\t') {
                if (used > 0 && words[used - 1] != ' ')
                    words[used++] = ' ';
                continue;
            }
            if (used >= (Py_ssize_t)sizeof(words) - 1) {
                Py_DECREF(display_name);
                return Py_NewRef(Py_None); /* a long name: headers.py */
            }
            words[used++] = *c;
        }
        if (used > 0 && words[used - 1] == ' ')
            used--;
        if (used > 0)
            Py_SETREF(display_name, ascii_text(words, used));
    }
    if (display_name == NULL)
        return NULL;
    if (angle != NULL) {
        const char *close = memchr(angle, '>', (size_t)(text + length - angle));
        if (close == NULL) {
            Py_DECREF(display_name);
            return Py_NewRef(Py_None); /* unclosed <URI>: 400 */
        }
        const char *uri_text = angle + 1;
        Py_ssize_t uri_length = close - uri_text;
        trim(&uri_text, &uri_length);
        const char *rest = close + 1;
        Py_ssize_t rest_length = text + length - rest;
        trim(&rest, &rest_length);
        if (rest_length > 0 && rest[0] != ';') {
            Py_DECREF(display_name);
            return Py_NewRef(Py_None); /* something after the URI: 400 */
        }
        PyObject *uri = parse_uri(uri_text, uri_length);
        PyObject *params = rest_length == 0 ? Py_NewRef(empty_tuple) : parameters(rest + 1, rest_length - 1, 1);
        return make_name_addr(display_name, uri, params);
    }
    /* An addr-spec: its parameters are the header's (§20.10). */
    const char *semicolon = memchr(text, ';', (size_t)length);
    Py_ssize_t uri_length = semicolon == NULL ? length : semicolon - text;
    if (has_any(text, uri_length, "?")) {
        Py_DECREF(display_name);
        return Py_NewRef(Py_None);
    }
    PyObject *uri = parse_uri(text, uri_length);
    PyObject *params = semicolon == NULL ? Py_NewRef(empty_tuple)
                                         : parameters(semicolon + 1, length - uri_length - 1, 1);
    return make_name_addr(display_name, uri, params);
}

/* headers.parse_via for one Via value "SIP/2.0/UDP host:port;params". */
static PyObject *parse_via(PyObject *value)
{
    static const char prefix[] = "SIP/2.0/";
    const Py_ssize_t prefix_length = sizeof(prefix) - 1;
    const char *text = PyUnicode_AsUTF8AndSize(value, NULL);
    if (text == NULL)
        return NULL;
    Py_ssize_t length = PyUnicode_GET_LENGTH(value);
    if (length <= prefix_length || memcmp(text, prefix, (size_t)prefix_length) != 0)
        return Py_NewRef(Py_None);
    Py_ssize_t at = prefix_length, transport_start = at;
    while (at < length && (is_alnum((unsigned char)text[at]) || text[at] == '-'))
        at++;
    Py_ssize_t transport_length = at - transport_start;
    if (transport_length == 0 || at >= length || text[at] != ' ')
        return Py_NewRef(Py_None);
    Py_ssize_t sent_by = ++at;
    while (at < length && text[at] != ';' && text[at] != ' ' && text[at] != '\t')
        at++;
    if (at < length && text[at] != ';')
        return Py_NewRef(Py_None); /* whitespace after sent-by: headers.py */
    PyObject *host = NULL, *port = NULL;
    int parsed = host_port(text + sent_by, at - sent_by, &host, &port);
    if (parsed <= 0)
        return parsed < 0 ? NULL : Py_NewRef(Py_None);
    PyObject *params = at == length ? Py_NewRef(empty_tuple) : parameters(text + at + 1, length - at - 1, 1);
    PyObject *transport = NULL, *result = NULL;
    if (params == NULL)
        goto done;
    if (params == Py_None) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    /* RFC 3581: an rport with a value must be a port (the first rport, any case). */
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(params); i++) {
        PyObject *pair = PyTuple_GET_ITEM(params, i);
        PyObject *key = PyTuple_GET_ITEM(pair, 0), *rport = PyTuple_GET_ITEM(pair, 1);
        if (PyUnicode_GET_LENGTH(key) != 5 || strncasecmp((const char *)PyUnicode_1BYTE_DATA(key), "rport", 5) != 0)
            continue;
        if (rport != Py_None && PyUnicode_GET_LENGTH(rport) > 0) {
            long long number = digits_value((const char *)PyUnicode_1BYTE_DATA(rport), PyUnicode_GET_LENGTH(rport), 10);
            if (number < 1 || number > 65535) {
                result = Py_NewRef(Py_None);
                goto done;
            }
        }
        break;
    }
    transport = PyUnicode_New(transport_length, 127);
    if (transport == NULL)
        goto done;
    Py_UCS1 *upper = PyUnicode_1BYTE_DATA(transport);
    for (Py_ssize_t i = 0; i < transport_length; i++) {
        char c = text[transport_start + i];
        upper[i] = (Py_UCS1)((c >= 'a' && c <= 'z') ? c - 32 : c);
    }
    PyObject *names[] = {str_transport, str_host, str_port, str_parameters};
    PyObject *values[] = {transport, host, port, params};
    result = frozen_value(via_class, names, values, 4);
done:
    Py_XDECREF(host);
    Py_XDECREF(port);
    Py_XDECREF(params);
    Py_XDECREF(transport);
    return result;
}

/* headers.parse_cseq: "number method", the number below 2**31. */
static PyObject *parse_cseq(PyObject *value)
{
    const char *text = PyUnicode_AsUTF8AndSize(value, NULL);
    if (text == NULL)
        return NULL;
    Py_ssize_t length = PyUnicode_GET_LENGTH(value), at = 0;
    while (at < length && text[at] >= '0' && text[at] <= '9')
        at++;
    long long number = digits_value(text, at, 10);
    Py_ssize_t method_start = at;
    while (method_start < length && (text[method_start] == ' ' || text[method_start] == '\t'))
        method_start++;
    if (number < 0 || number >= 2147483648LL || method_start == at
        || !is_token(text + method_start, length - method_start))
        return Py_NewRef(Py_None);
    PyObject *names[] = {str_number, str_method};
    PyObject *values[] = {PyLong_FromLongLong(number), ascii_text(text + method_start, length - method_start)};
    PyObject *result = frozen_value(cseq_class, names, values, 2);
    Py_XDECREF(values[0]);
    Py_XDECREF(values[1]);
    return result;
}

/* A header's one value (a str in the index), NULL when absent or repeated. */
static PyObject *single(PyObject *index, PyObject *key)
{
    PyObject *value = PyDict_GetItemWithError(index, key);
    return value != NULL && PyUnicode_CheckExact(value) ? value : NULL;
}

/* (vias, from_, to, call_id, cseq) of a message whose every check passes (message.py's
 * _check_required), else Py_None; NULL on an error. method and uri: the request's,
 * NULL for a response. */
static PyObject *addressing(PyObject *index, PyObject *method, PyObject *request_uri)
{
    PyObject *from_value = single(index, key_from), *to_value = single(index, key_to);
    PyObject *call_id = single(index, key_call_id), *cseq_value = single(index, key_cseq);
    PyObject *via_values = PyDict_GetItemWithError(index, key_via);
    if (PyErr_Occurred())
        return NULL;
    if (from_value == NULL || to_value == NULL || call_id == NULL || cseq_value == NULL || via_values == NULL)
        return Py_NewRef(Py_None); /* missing or repeated: 400 */
    /* Call-ID: printable ASCII, no space (message._CALL_ID). */
    const char *id = (const char *)PyUnicode_1BYTE_DATA(call_id);
    Py_ssize_t id_length = PyUnicode_GET_LENGTH(call_id);
    if (id_length == 0 || has_any(id, id_length, " \t"))
        return Py_NewRef(Py_None);
    PyObject *max_forwards = PyDict_GetItemWithError(index, key_max_forwards);
    if (max_forwards == NULL && PyErr_Occurred())
        return NULL;
    if (max_forwards != NULL && !PyUnicode_CheckExact(max_forwards))
        return Py_NewRef(Py_None); /* repeated: 400, a response's too */
    if (method != NULL) {
        if (max_forwards != NULL) {
            long long hops = digits_value((const char *)PyUnicode_1BYTE_DATA(max_forwards),
                                          PyUnicode_GET_LENGTH(max_forwards), 10);
            if (hops < 0 || hops > 255)
                return Py_NewRef(Py_None);
        }
        PyObject *uri = parse_uri((const char *)PyUnicode_1BYTE_DATA(request_uri), PyUnicode_GET_LENGTH(request_uri));
        if (uri == NULL || uri == Py_None)
            return uri;
        Py_DECREF(uri);
    }
    Py_ssize_t lines = PyUnicode_CheckExact(via_values) ? 1 : PyList_GET_SIZE(via_values);
    if (lines > max_list_elements)
        return Py_NewRef(Py_None);
    PyObject *vias = PyTuple_New(lines), *from_ = NULL, *to = NULL, *cseq = NULL, *result = NULL;
    if (vias == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < lines; i++) {
        PyObject *line = PyUnicode_CheckExact(via_values) ? via_values : PyList_GET_ITEM(via_values, i);
        const char *text = (const char *)PyUnicode_1BYTE_DATA(line);
        if (has_any(text, PyUnicode_GET_LENGTH(line), ",\"<")) {
            result = Py_NewRef(Py_None); /* a list on one line: headers.split_comma_list */
            goto done;
        }
        PyObject *via = parse_via(line);
        if (via == NULL || via == Py_None) {
            result = via;
            goto done;
        }
        PyTuple_SET_ITEM(vias, i, via);
    }
    from_ = parse_name_addr(from_value);
    if (from_ == NULL || from_ == Py_None) {
        result = from_ == NULL ? NULL : Py_NewRef(Py_None);
        goto done;
    }
    to = parse_name_addr(to_value);
    if (to == NULL || to == Py_None) {
        result = to == NULL ? NULL : Py_NewRef(Py_None);
        goto done;
    }
    cseq = parse_cseq(cseq_value);
    if (cseq == NULL || cseq == Py_None) {
        result = cseq == NULL ? NULL : Py_NewRef(Py_None);
        goto done;
    }
    if (method != NULL) {
        /* §8.2: the CSeq method must be the request's. */
        PyObject *cseq_method = PyObject_GetAttr(cseq, str_method);
        if (cseq_method == NULL)
            goto done;
        int same = PyUnicode_Compare(cseq_method, method);
        Py_DECREF(cseq_method);
        if (same == -1 && PyErr_Occurred())
            goto done;
        if (same != 0) {
            result = Py_NewRef(Py_None);
            goto done;
        }
    }
    result = PyTuple_Pack(5, vias, from_, to, call_id, cseq);
done:
    Py_DECREF(vias);
    Py_XDECREF(from_);
    Py_XDECREF(to);
    Py_XDECREF(cseq);
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
    PyObject *typed = body == NULL ? NULL
                                   : addressing(index, parts[0] == Py_True ? NULL : parts[1],
                                                parts[0] == Py_True ? NULL : parts[2]);
    if (typed != NULL)
        result = PyTuple_Pack(8, parts[0], parts[1], parts[2], parts[3], field_tuple, index, body, typed);
    Py_XDECREF(field_tuple);
    Py_XDECREF(body);
    Py_XDECREF(typed);
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
    if (nargs != 10 || !PyCallable_Check(args[0]) || !PyDict_CheckExact(args[1]) || !PyType_Check(args[4])
        || !PyType_Check(args[5]) || !PyType_Check(args[6]) || !PyType_Check(args[7])) {
        PyErr_SetString(PyExc_TypeError, "bind(canonical_name, key_of: dict, max_lines: int, max_length: int, Uri,"
                                         " NameAddr, Via, CSeq, max_parameters: int, max_list_elements: int)");
        return NULL;
    }
    Py_ssize_t lines = PyLong_AsSsize_t(args[2]), length = PyLong_AsSsize_t(args[3]);
    Py_ssize_t parameters_limit = PyLong_AsSsize_t(args[8]), elements = PyLong_AsSsize_t(args[9]);
    if (PyErr_Occurred())
        return NULL;
    if (lines < 1 || length < 1 || parameters_limit < 1 || elements < 1) {
        PyErr_SetString(PyExc_ValueError, "bind(): the limits must be positive");
        return NULL;
    }
    Py_XSETREF(canonical_name, Py_NewRef(args[0]));
    Py_XSETREF(key_of, Py_NewRef(args[1]));
    Py_XSETREF(uri_class, Py_NewRef(args[4]));
    Py_XSETREF(name_addr_class, Py_NewRef(args[5]));
    Py_XSETREF(via_class, Py_NewRef(args[6]));
    Py_XSETREF(cseq_class, Py_NewRef(args[7]));
    max_lines = lines;
    max_length = length;
    max_parameters = parameters_limit;
    max_list_elements = elements;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"scan", (PyCFunction)(void (*)(void))head_scan, METH_FASTCALL,
     "scan(data, limit, datagram): (is_response, first, second, third, fields, index, body, typed) of a"
     " plain message (typed: (vias, from_, to, call_id, cseq) or None), or None for message.py to parse."},
    {"bind", (PyCFunction)(void (*)(void))head_bind, METH_FASTCALL,
     "bind(canonical_name, key_of, max_lines, max_length, Uri, NameAddr, Via, CSeq, max_parameters,"
     " max_list_elements): message.py's names, classes and limits."},
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
    static const CoreName names[] = {
        {&content_length_key, "content-length"}, {&key_via, "via"}, {&key_from, "from"}, {&key_to, "to"},
        {&key_call_id, "call-id"}, {&key_cseq, "cseq"}, {&key_max_forwards, "max-forwards"},
        {&str_scheme, "scheme"}, {&str_user, "user"}, {&str_password, "password"}, {&str_host, "host"},
        {&str_port, "port"}, {&str_parameters, "parameters"}, {&str_headers, "headers"},
        {&str_display_name, "display_name"}, {&str_uri, "uri"}, {&str_transport, "transport"},
        {&str_number, "number"}, {&str_method, "method"}, {&str_sip, "sip"}, {&str_sips, "sips"},
    };
    if (values_start(names, sizeof(names) / sizeof(names[0])) < 0)
        return NULL;
    return PyModule_Create(&head_module);
}
