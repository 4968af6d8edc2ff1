/* Batched datagram I/O in C: the compiled twin of eko_rtp/media/mmsg.py's
 * PythonSendBatch and PythonReceiveBatch, with the same methods, attributes and
 * errors (tests/test_mmsg.py runs one suite against both).
 *
 * Why a twin: with every call on one socket (media/shared_port.py) the system calls
 * are batched, but the Python around each datagram (copying it into its slot,
 * writing the lengths with struct, reading the source, the data and the arrival
 * time back) costs about as much as the kernel's share of it. Here each of those is
 * one C call, and ReceiveBatch.dispatch runs a whole batch's routing loop without
 * a Python frame per datagram: only the call's handler runs in Python.
 *
 * What stays out of C: which call a datagram belongs to (the routes dict and the
 * handlers are media/shared_port.py's), and every rule of RTP.
 *
 * Buffers are allocated once per batch; nothing is allocated per datagram but the
 * objects handed to Python (the datagram's bytes, the source's bytes for the look-up,
 * the arrival time). The GIL is kept: every call here is non-blocking. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define NAME_SIZE ((socklen_t)sizeof(struct sockaddr_in6)) /* the larger of the two families */
#define CONTROL_SIZE CMSG_SPACE(sizeof(struct timespec))
#ifndef SO_TIMESTAMPNS
#define SO_TIMESTAMPNS 35
#endif
#define MAX_SLOTS 4096
#define MAX_SLOT_SIZE 65536

typedef struct {
    PyObject_HEAD
    PyObject *sock;
    unsigned int count;
    Py_ssize_t slot_size;
    char *data;
    char *names;
    char *control; /* receiving only */
    struct iovec *iovecs;
    struct mmsghdr *messages;
    Py_ssize_t pending;     /* sending: datagrams queued */
    unsigned int filled;    /* receiving: entries the kernel wrote last time */
    int dispatching;        /* receiving: inside dispatch (a handler may not read the batch) */
    long long sent;
    long long dropped;
    long long errors;
    int last_error;         /* errno, or 0 for none */
} Batch;

static int batch_alloc(Batch *self, PyObject *sock, int slots, Py_ssize_t slot_size, int receiving)
{
    if (slots < 1 || slots > MAX_SLOTS) {
        PyErr_Format(PyExc_ValueError, "a batch needs 1..%d slots, not %d", MAX_SLOTS, slots);
        return -1;
    }
    if (slot_size < 1 || slot_size > MAX_SLOT_SIZE) {
        PyErr_Format(PyExc_ValueError, "a batch slot holds 1..%d octets, not %zd", MAX_SLOT_SIZE, slot_size);
        return -1;
    }
    /* an earlier __init__ that failed half way may have left some buffers */
    PyMem_Free(self->data);
    PyMem_Free(self->names);
    PyMem_Free(self->control);
    PyMem_Free(self->iovecs);
    PyMem_Free(self->messages);
    self->control = NULL;
    self->count = (unsigned int)slots;
    self->slot_size = slot_size;
    self->data = PyMem_Calloc((size_t)slots, (size_t)slot_size);
    self->names = PyMem_Calloc((size_t)slots, NAME_SIZE);
    self->iovecs = PyMem_Calloc((size_t)slots, sizeof(struct iovec));
    self->messages = PyMem_Calloc((size_t)slots, sizeof(struct mmsghdr));
    if (receiving)
        self->control = PyMem_Calloc((size_t)slots, CONTROL_SIZE);
    if (!self->data || !self->names || !self->iovecs || !self->messages || (receiving && !self->control)) {
        PyErr_NoMemory();
        return -1;
    }
    for (int index = 0; index < slots; index++) {
        struct iovec *iovec = &self->iovecs[index];
        struct msghdr *header = &self->messages[index].msg_hdr;
        iovec->iov_base = self->data + (size_t)index * (size_t)slot_size;
        iovec->iov_len = (size_t)slot_size;
        header->msg_name = self->names + (size_t)index * NAME_SIZE;
        header->msg_namelen = NAME_SIZE;
        header->msg_iov = iovec;
        header->msg_iovlen = 1;
        if (receiving) {
            header->msg_control = self->control + (size_t)index * CONTROL_SIZE;
            header->msg_controllen = CONTROL_SIZE;
        }
    }
    Py_INCREF(sock);
    self->sock = sock;
    return 0;
}

static int batch_traverse(Batch *self, visitproc visit, void *arg)
{
    Py_VISIT(self->sock);
    return 0;
}

static int batch_clear(Batch *self)
{
    Py_CLEAR(self->sock);
    return 0;
}

static void batch_dealloc(Batch *self)
{
    PyObject_GC_UnTrack(self);
    batch_clear(self);
    PyMem_Free(self->data);
    PyMem_Free(self->names);
    PyMem_Free(self->control);
    PyMem_Free(self->iovecs);
    PyMem_Free(self->messages);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The socket's descriptor, as sock.fileno() gives it: -1 for a closed socket, which
 * the system call then refuses (EBADF), as the Python twin does. */
static int batch_fd(Batch *self, int *fd)
{
    if (self->sock == NULL) {
        *fd = -1;
        return 0;
    }
    PyObject *result = PyObject_CallMethod(self->sock, "fileno", NULL);
    if (result == NULL)
        return -1;
    long value = PyLong_AsLong(result);
    Py_DECREF(result);
    if (value == -1 && PyErr_Occurred())
        return -1;
    *fd = (int)value;
    return 0;
}

static PyObject *batch_last_error(Batch *self, void *closure)
{
    if (self->last_error == 0)
        Py_RETURN_NONE;
    return PyLong_FromLong(self->last_error);
}

/* -- sending ------------------------------------------------------------------- */

static int send_init(Batch *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"sock", "slots", "slot_size", NULL};
    PyObject *sock;
    int slots = 256;
    Py_ssize_t slot_size = 512;
    if (self->sock != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "SendBatch is initialised once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|$in:SendBatch", keywords, &sock, &slots, &slot_size))
        return -1;
    return batch_alloc(self, sock, slots, slot_size, 0);
}

/* Send every queued datagram; how many left, or -1 with an exception set. */
static Py_ssize_t send_flush_impl(Batch *self)
{
    unsigned int count = (unsigned int)self->pending;
    if (count == 0)
        return 0;
    self->pending = 0;
    int fd;
    if (batch_fd(self, &fd) < 0)
        return -1;
    long long errors_before = self->errors;
    unsigned int done = 0;
    for (unsigned int pass = 0; pass < count; pass++) { /* each pass sends or skips one at least */
        if (done >= count)
            break;
        int result = sendmmsg(fd, self->messages + done, count - done, 0);
        if (result > 0) {
            done += (unsigned int)result;
            continue;
        }
        int code = errno;
        if (code == EINTR)
            continue;
        if (code == EAGAIN || code == EWOULDBLOCK || code == ENOBUFS) {
            self->dropped += count - done; /* a full socket buffer: a frame late is worth nothing */
            break;
        }
        self->errors += 1; /* the first datagram of the rest was refused: skip it */
        self->last_error = code;
        done += 1;
    }
    long long sent = (long long)done - (self->errors - errors_before);
    self->sent += sent;
    return (Py_ssize_t)sent;
}

static PyObject *send_flush(Batch *self, PyObject *unused)
{
    Py_ssize_t sent = send_flush_impl(self);
    if (sent < 0)
        return NULL;
    return PyLong_FromSsize_t(sent);
}

/* Queue the datagram made of the buffers parts for the socket address name; 0, or -1
 * with an exception (the batch unchanged). */
static int send_add_impl(Batch *self, PyObject *parts_object, const char *name, Py_ssize_t name_length)
{
    if (self->sock == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "SendBatch is not initialised");
        return -1;
    }
    if (name_length > NAME_SIZE || name_length < 1) {
        PyErr_Format(PyExc_ValueError, "a socket address of %zd octets (1..%d)", name_length, (int)NAME_SIZE);
        return -1;
    }
    if (self->pending == (Py_ssize_t)self->count && send_flush_impl(self) < 0)
        return -1;
    Py_ssize_t index = self->pending;
    Py_ssize_t size = self->slot_size;
    char *slot = self->data + index * size;
    Py_ssize_t offset = 0;
    PyObject *parts = PySequence_Fast(parts_object, "parts must be a sequence of buffers");
    if (parts == NULL)
        return -1;
    Py_ssize_t part_count = PySequence_Fast_GET_SIZE(parts);
    PyObject **items = PySequence_Fast_ITEMS(parts);
    for (Py_ssize_t part = 0; part < part_count; part++) {
        Py_buffer view;
        if (PyObject_GetBuffer(items[part], &view, PyBUF_SIMPLE) < 0) {
            Py_DECREF(parts);
            return -1;
        }
        if (view.len > size - offset) {
            PyBuffer_Release(&view);
            Py_DECREF(parts);
            PyErr_Format(PyExc_ValueError, "a datagram of more than %zd octets does not fit a batch slot", size);
            return -1;
        }
        memcpy(slot + offset, view.buf, (size_t)view.len);
        offset += view.len;
        PyBuffer_Release(&view);
    }
    Py_DECREF(parts);
    memcpy(self->names + index * NAME_SIZE, name, (size_t)name_length);
    self->messages[index].msg_hdr.msg_namelen = (socklen_t)name_length;
    self->iovecs[index].iov_len = (size_t)offset;
    self->pending = index + 1;
    return 0;
}

static PyObject *send_add(Batch *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "add(parts, name) takes 2 arguments, not %zd", nargs);
        return NULL;
    }
    Py_buffer name;
    if (PyObject_GetBuffer(args[1], &name, PyBUF_SIMPLE) < 0)
        return NULL;
    int result = send_add_impl(self, args[0], name.buf, name.len);
    PyBuffer_Release(&name);
    if (result < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef send_methods[] = {
    {"add", (PyCFunction)(void (*)(void))send_add, METH_FASTCALL,
     "add(parts, name): queue the datagram made of the buffers parts for the socket address name."},
    {"flush", (PyCFunction)send_flush, METH_NOARGS, "flush() -> int: send every queued datagram; how many left."},
    {NULL},
};

static PyMemberDef send_members[] = {
    {"pending", T_PYSSIZET, offsetof(Batch, pending), READONLY, "datagrams queued"},
    {"sent", T_LONGLONG, offsetof(Batch, sent), READONLY, "datagrams the kernel took"},
    {"dropped", T_LONGLONG, offsetof(Batch, dropped), READONLY, "lost to a full socket buffer"},
    {"errors", T_LONGLONG, offsetof(Batch, errors), READONLY, "refused by the kernel"},
    {NULL},
};

static PyGetSetDef batch_getset[] = {
    {"last_error", (getter)batch_last_error, NULL, "the errno of the last refusal, or None", NULL},
    {NULL},
};

static PyTypeObject SendBatchType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "eko_rtp.media._batch.SendBatch",
    .tp_basicsize = sizeof(Batch),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Datagrams queued for one sendmmsg on a socket (see eko_rtp.media.mmsg).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)send_init,
    .tp_dealloc = (destructor)batch_dealloc,
    .tp_traverse = (traverseproc)batch_traverse,
    .tp_clear = (inquiry)batch_clear,
    .tp_methods = send_methods,
    .tp_members = send_members,
    .tp_getset = batch_getset,
};

/* -- one call's sending ------------------------------------------------------- */

/* What a MediaStream calls on its RTP socket (sendmsg, sendto, fileno), queueing into
 * a shared SendBatch instead: the twin of mmsg.PythonLegSender. The destination's
 * socket address is built when the address object changes, not per datagram. */
typedef struct {
    PyObject_HEAD
    Batch *batch;
    PyObject *sock;
    PyObject *address; /* the address object the name was built from */
    char name[sizeof(struct sockaddr_in6)];
    Py_ssize_t name_length;
} LegSender;

static int leg_init(LegSender *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"batch", "sock", NULL};
    PyObject *batch, *sock;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O:LegSender", keywords, &SendBatchType, &batch, &sock))
        return -1;
    Py_INCREF(batch);
    Py_XSETREF(self->batch, (Batch *)batch);
    Py_INCREF(sock);
    Py_XSETREF(self->sock, sock);
    Py_CLEAR(self->address);
    return 0;
}

static int leg_traverse(LegSender *self, visitproc visit, void *arg)
{
    Py_VISIT(self->batch);
    Py_VISIT(self->sock);
    Py_VISIT(self->address);
    return 0;
}

static int leg_clear(LegSender *self)
{
    Py_CLEAR(self->batch);
    Py_CLEAR(self->sock);
    Py_CLEAR(self->address);
    return 0;
}

static void leg_dealloc(LegSender *self)
{
    PyObject_GC_UnTrack(self);
    leg_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The socket address of (host, port, ...) as mmsg.socket_address builds it: numeric
 * hosts only, IPv6 when the host has a colon. 0, or -1 with OSError/TypeError. */
static int leg_name_of(LegSender *self, PyObject *address)
{
    if (address == self->address)
        return 0;
    PyObject *host_object, *port_object;
    if (!PyTuple_Check(address) || PyTuple_GET_SIZE(address) < 2) {
        PyErr_SetString(PyExc_TypeError, "an address is a (host, port) tuple");
        return -1;
    }
    host_object = PyTuple_GET_ITEM(address, 0);
    port_object = PyTuple_GET_ITEM(address, 1);
    const char *host = PyUnicode_AsUTF8(host_object);
    if (host == NULL)
        return -1;
    long port = PyLong_AsLong(port_object);
    if (port == -1 && PyErr_Occurred())
        return -1;
    if (port < 0 || port > 65535) {
        PyErr_Format(PyExc_OverflowError, "port must be 0-65535, not %ld", port);
        return -1;
    }
    memset(self->name, 0, sizeof(self->name));
    if (strchr(host, ':') != NULL) {
        struct sockaddr_in6 name6;
        memset(&name6, 0, sizeof(name6));
        name6.sin6_family = AF_INET6;
        name6.sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host, &name6.sin6_addr) != 1) {
            PyErr_Format(PyExc_OSError, "illegal IP address string passed to inet_pton: %s", host);
            return -1;
        }
        memcpy(self->name, &name6, sizeof(name6));
        self->name_length = sizeof(name6);
    } else {
        struct sockaddr_in name4;
        memset(&name4, 0, sizeof(name4));
        name4.sin_family = AF_INET;
        name4.sin_port = htons((uint16_t)port);
        if (inet_aton(host, &name4.sin_addr) == 0) {
            PyErr_Format(PyExc_OSError, "illegal IP address string passed to inet_aton: %s", host);
            return -1;
        }
        memcpy(self->name, &name4, sizeof(name4));
        self->name_length = sizeof(name4);
    }
    Py_INCREF(address);
    Py_XSETREF(self->address, address);
    return 0;
}

static PyObject *leg_send(LegSender *self, PyObject *parts, PyObject *address)
{
    if (self->batch == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "LegSender is not initialised");
        return NULL;
    }
    if (leg_name_of(self, address) < 0 || send_add_impl(self->batch, parts, self->name, self->name_length) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* sendmsg(buffers, ancillary=(), flags=0, address=None): the address is the 4th argument. */
static PyObject *leg_sendmsg(LegSender *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "sendmsg(buffers, ancillary, flags, address) takes 4 arguments here, not %zd",
                     nargs);
        return NULL;
    }
    return leg_send(self, args[0], args[3]);
}

static PyObject *leg_sendto(LegSender *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "sendto(data, address) takes 2 arguments, not %zd", nargs);
        return NULL;
    }
    PyObject *parts = PyTuple_Pack(1, args[0]);
    if (parts == NULL)
        return NULL;
    PyObject *result = leg_send(self, parts, args[1]);
    Py_DECREF(parts);
    return result;
}

static PyObject *leg_fileno(LegSender *self, PyObject *unused)
{
    if (self->sock == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "LegSender is not initialised");
        return NULL;
    }
    return PyObject_CallMethod(self->sock, "fileno", NULL);
}

static PyMethodDef leg_methods[] = {
    {"sendmsg", (PyCFunction)(void (*)(void))leg_sendmsg, METH_FASTCALL,
     "sendmsg(buffers, ancillary, flags, address): queue the datagram into the batch."},
    {"sendto", (PyCFunction)(void (*)(void))leg_sendto, METH_FASTCALL,
     "sendto(data, address): queue the datagram into the batch."},
    {"fileno", (PyCFunction)leg_fileno, METH_NOARGS, "the shared socket's descriptor"},
    {NULL},
};

static PyTypeObject LegSenderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "eko_rtp.media._batch.LegSender",
    .tp_basicsize = sizeof(LegSender),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One call's sending into a shared SendBatch (see eko_rtp.media.mmsg).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)leg_init,
    .tp_dealloc = (destructor)leg_dealloc,
    .tp_traverse = (traverseproc)leg_traverse,
    .tp_clear = (inquiry)leg_clear,
    .tp_methods = leg_methods,
};

/* -- receiving ----------------------------------------------------------------- */

static int receive_init(Batch *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"sock", "slots", "slot_size", NULL};
    PyObject *sock;
    int slots = 64;
    Py_ssize_t slot_size = 2048;
    if (self->sock != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "ReceiveBatch is initialised once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|$in:ReceiveBatch", keywords, &sock, &slots, &slot_size))
        return -1;
    PyObject *done = PyObject_CallMethod(sock, "setsockopt", "iii", SOL_SOCKET, SO_TIMESTAMPNS, 1);
    if (done == NULL)
        return -1;
    Py_DECREF(done);
    return batch_alloc(self, sock, slots, slot_size, 1);
}

/* Take what waits on the socket, up to limit datagrams and a batch; how many came, or
 * -1 with an exception. */
static int receive_impl(Batch *self, Py_ssize_t limit)
{
    if (self->sock == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "ReceiveBatch is not initialised");
        return -1;
    }
    if (self->dispatching) { /* a handler's receive or dispatch would overwrite the batch it reads */
        PyErr_SetString(PyExc_RuntimeError, "a handler may not read the batch it is dispatched from");
        return -1;
    }
    for (unsigned int index = 0; index < self->filled; index++) { /* the kernel wrote actual lengths */
        self->messages[index].msg_hdr.msg_namelen = NAME_SIZE;
        self->messages[index].msg_hdr.msg_controllen = CONTROL_SIZE;
    }
    self->filled = 0;
    int fd;
    if (batch_fd(self, &fd) < 0)
        return -1;
    unsigned int wanted = limit < (Py_ssize_t)self->count ? (unsigned int)limit : self->count;
    if (wanted == 0)
        return 0;
    int result = recvmmsg(fd, self->messages, wanted, MSG_DONTWAIT, NULL);
    if (result < 0) {
        int code = errno;
        if (code != EAGAIN && code != EWOULDBLOCK && code != EINTR) {
            /* e.g. ECONNREFUSED: an ICMP error for an earlier send, reported once */
            self->errors += 1;
            self->last_error = code;
        }
        return 0;
    }
    self->filled = (unsigned int)result;
    return result;
}

/* The optional limit argument: at most this many datagrams (a whole batch without it). */
static int limit_of(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t at, Py_ssize_t *limit)
{
    *limit = PY_SSIZE_T_MAX;
    if (nargs <= at || args[at] == Py_None)
        return 0;
    *limit = PyLong_AsSsize_t(args[at]);
    if (*limit == -1 && PyErr_Occurred())
        return -1;
    if (*limit < 0) {
        PyErr_Format(PyExc_ValueError, "a limit of %zd datagrams", *limit);
        return -1;
    }
    return 0;
}

static PyObject *receive_receive(Batch *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t limit;
    if (nargs > 1) {
        PyErr_Format(PyExc_TypeError, "receive(limit=None) takes at most 1 argument, not %zd", nargs);
        return NULL;
    }
    if (limit_of(args, nargs, 0, &limit) < 0)
        return NULL;
    int count = receive_impl(self, limit);
    if (count < 0)
        return NULL;
    return PyLong_FromLong(count);
}

static int entry_index(Batch *self, PyObject *arg, Py_ssize_t *index)
{
    Py_ssize_t value = PyLong_AsSsize_t(arg);
    if (value == -1 && PyErr_Occurred())
        return -1;
    if (value < 0 || value >= (Py_ssize_t)self->filled) {
        PyErr_Format(PyExc_IndexError, "entry %zd of a batch that holds %u", value, self->filled);
        return -1;
    }
    *index = value;
    return 0;
}

static PyObject *entry_datagram(Batch *self, Py_ssize_t index)
{
    Py_ssize_t length = (Py_ssize_t)self->messages[index].msg_len;
    if (length > self->slot_size)
        length = self->slot_size; /* cut to the slot, as the kernel did */
    return PyBytes_FromStringAndSize(self->data + index * self->slot_size, length);
}

static PyObject *entry_source(Batch *self, Py_ssize_t index)
{
    socklen_t length = self->messages[index].msg_hdr.msg_namelen;
    if (length > NAME_SIZE)
        length = NAME_SIZE;
    return PyBytes_FromStringAndSize(self->names + index * NAME_SIZE, (Py_ssize_t)length);
}

static PyObject *entry_arrival(Batch *self, Py_ssize_t index)
{
    struct msghdr *header = &self->messages[index].msg_hdr;
    if (header->msg_controllen < CMSG_LEN(sizeof(struct timespec)))
        Py_RETURN_NONE;
    struct cmsghdr *message = CMSG_FIRSTHDR(header);
    if (message == NULL || message->cmsg_level != SOL_SOCKET || message->cmsg_type != SO_TIMESTAMPNS)
        Py_RETURN_NONE;
    struct timespec stamp;
    memcpy(&stamp, CMSG_DATA(message), sizeof(stamp));
    return PyFloat_FromDouble((double)stamp.tv_sec + (double)stamp.tv_nsec * 1e-9);
}

static PyObject *receive_datagram(Batch *self, PyObject *arg)
{
    Py_ssize_t index;
    if (entry_index(self, arg, &index) < 0)
        return NULL;
    return entry_datagram(self, index);
}

static PyObject *receive_source(Batch *self, PyObject *arg)
{
    Py_ssize_t index;
    if (entry_index(self, arg, &index) < 0)
        return NULL;
    return entry_source(self, index);
}

static PyObject *receive_arrival(Batch *self, PyObject *arg)
{
    Py_ssize_t index;
    if (entry_index(self, arg, &index) < 0)
        return NULL;
    return entry_arrival(self, index);
}

/* The exception being raised, taken (with its traceback) and cleared. */
static PyObject *raised_exception(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (value == NULL) {
        value = Py_None;
        Py_INCREF(value);
    } else if (traceback != NULL) {
        PyException_SetTraceback(value, traceback);
    }
    Py_XDECREF(type);
    Py_XDECREF(traceback);
    return value;
#endif
}

/* One datagram to its route: handler(data, address, now, arrival), a failure to
 * failed(address, error). 0, or -1 with an exception to raise (a BaseException from
 * the handler, or anything from stray or failed). */
static int dispatch_one(Batch *self, Py_ssize_t index, PyObject *routes, PyObject *now, PyObject *stray,
                        PyObject *failed)
{
    PyObject *source = entry_source(self, index);
    if (source == NULL)
        return -1;
    PyObject *route = PyDict_GetItemWithError(routes, source);
    if (route == NULL) {
        if (PyErr_Occurred()) {
            Py_DECREF(source);
            return -1;
        }
        PyObject *result = PyObject_CallOneArg(stray, source);
        Py_DECREF(source);
        if (result == NULL)
            return -1;
        Py_DECREF(result);
        return 0;
    }
    Py_DECREF(source);
    if (!PyTuple_Check(route) || PyTuple_GET_SIZE(route) != 2) {
        PyErr_SetString(PyExc_TypeError, "a route is a (handler, address) tuple");
        return -1;
    }
    Py_INCREF(route); /* a handler may take its own route away */
    PyObject *handler = PyTuple_GET_ITEM(route, 0);
    PyObject *address = PyTuple_GET_ITEM(route, 1);
    PyObject *arguments[4] = {NULL, address, now, NULL};
    arguments[0] = entry_datagram(self, index);
    arguments[3] = entry_arrival(self, index);
    if (arguments[0] == NULL || arguments[3] == NULL) {
        Py_XDECREF(arguments[0]);
        Py_XDECREF(arguments[3]);
        Py_DECREF(route);
        return -1;
    }
    PyObject *result = PyObject_Vectorcall(handler, arguments, 4, NULL);
    Py_DECREF(arguments[0]);
    Py_DECREF(arguments[3]);
    if (result != NULL) {
        Py_DECREF(result);
        Py_DECREF(route);
        return 0;
    }
    if (!PyErr_ExceptionMatches(PyExc_Exception)) { /* cancellation, KeyboardInterrupt: goes up */
        Py_DECREF(route);
        return -1;
    }
    PyObject *error = raised_exception();
    PyObject *reported = PyObject_CallFunctionObjArgs(failed, address, error, NULL);
    Py_DECREF(error);
    Py_DECREF(route);
    if (reported == NULL)
        return -1;
    Py_DECREF(reported);
    return 0;
}

static PyObject *receive_dispatch(Batch *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t limit;
    if (nargs != 4 && nargs != 5) {
        PyErr_Format(PyExc_TypeError, "dispatch(routes, now, stray, failed, limit=None) takes 4 or 5 arguments,"
                     " not %zd", nargs);
        return NULL;
    }
    if (limit_of(args, nargs, 4, &limit) < 0)
        return NULL;
    PyObject *routes = args[0];
    if (!PyDict_Check(routes)) {
        PyErr_SetString(PyExc_TypeError, "routes must be a dict");
        return NULL;
    }
    int count = receive_impl(self, limit);
    if (count < 0)
        return NULL;
    self->dispatching = 1;
    for (Py_ssize_t index = 0; index < count; index++) {
        if (dispatch_one(self, index, routes, args[1], args[2], args[3]) < 0) {
            self->dispatching = 0;
            return NULL;
        }
    }
    self->dispatching = 0;
    return PyLong_FromLong(count);
}

static PyMethodDef receive_methods[] = {
    {"receive", (PyCFunction)(void (*)(void))receive_receive, METH_FASTCALL,
     "receive(limit=None) -> int: take what waits on the socket, up to limit and a batch, without blocking."},
    {"datagram", (PyCFunction)receive_datagram, METH_O, "datagram(index) -> bytes"},
    {"source", (PyCFunction)receive_source, METH_O, "source(index) -> bytes: the sender's socket address"},
    {"arrival", (PyCFunction)receive_arrival, METH_O,
     "arrival(index) -> float | None: the kernel's arrival time (wall clock)"},
    {"dispatch", (PyCFunction)(void (*)(void))receive_dispatch, METH_FASTCALL,
     "dispatch(routes, now, stray, failed, limit=None) -> int: receive a batch (at most limit datagrams)"
     " and hand each datagram to its route."},
    {NULL},
};

static PyMemberDef receive_members[] = {
    {"errors", T_LONGLONG, offsetof(Batch, errors), READONLY, "receive errors other than 'nothing waits'"},
    {NULL},
};

static PyTypeObject ReceiveBatchType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "eko_rtp.media._batch.ReceiveBatch",
    .tp_basicsize = sizeof(Batch),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Up to slots datagrams from a socket in one recvmmsg (see eko_rtp.media.mmsg).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)receive_init,
    .tp_dealloc = (destructor)batch_dealloc,
    .tp_traverse = (traverseproc)batch_traverse,
    .tp_clear = (inquiry)batch_clear,
    .tp_methods = receive_methods,
    .tp_members = receive_members,
    .tp_getset = batch_getset,
};

static struct PyModuleDef batch_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "eko_rtp.media._batch",
    .m_doc = "Batched datagram I/O in C (the twin of eko_rtp.media.mmsg's Python classes).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__batch(void)
{
    if (PyType_Ready(&SendBatchType) < 0 || PyType_Ready(&ReceiveBatchType) < 0 || PyType_Ready(&LegSenderType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&batch_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "SendBatch", (PyObject *)&SendBatchType) < 0 ||
        PyModule_AddObjectRef(module, "ReceiveBatch", (PyObject *)&ReceiveBatchType) < 0 ||
        PyModule_AddObjectRef(module, "LegSender", (PyObject *)&LegSenderType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
