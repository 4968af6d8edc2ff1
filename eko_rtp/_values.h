/* What the compiled parsers of untrusted text share (eko_rtp/sip/_head.c,
 * eko_rtp/media/_sdp.c): ASCII text made into str, and a frozen attrs value made field
 * by field, as its constructor would make it once the parser has made every check its
 * validators make (the class's own __setattr__, which refuses, is not called). */

#ifndef EKO_RTP_VALUES_H
#define EKO_RTP_VALUES_H

#include "_names.h"

static PyObject *empty_tuple; /* set by values_start() */

/* A str of length ASCII bytes (the parser has checked they are). */
static inline PyObject *ascii_text(const char *text, Py_ssize_t length)
{
    PyObject *result = PyUnicode_New(length, 127);
    if (result != NULL)
        memcpy(PyUnicode_DATA(result), text, (size_t)length);
    return result;
}

/* An instance of attrs class cls with names[i] = values[i]; NULL raised, also when a
 * value is NULL (its making failed, and raised). */
static inline PyObject *frozen_value(PyObject *cls, PyObject **names, PyObject **values, int count)
{
    for (int i = 0; i < count; i++)
        if (values[i] == NULL)
            return NULL;
    PyObject *made = PyBaseObject_Type.tp_new((PyTypeObject *)cls, empty_tuple, NULL);
    if (made == NULL)
        return NULL;
    for (int i = 0; i < count; i++)
        if (PyObject_GenericSetAttr(made, names[i], values[i]) < 0) {
            Py_DECREF(made);
            return NULL;
        }
    return made;
}

/* The module's start: its names interned, the empty tuple made; 0, or -1 raised. */
static inline int values_start(const CoreName *names, size_t count)
{
    if (intern_names(names, count) < 0)
        return -1;
    if (empty_tuple == NULL && (empty_tuple = PyTuple_New(0)) == NULL)
        return -1;
    return 0;
}

#endif
