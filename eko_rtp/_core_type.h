/* What every compiled twin's core type shares (eko_rtp/media/_stream.c, _vad.c,
 * eko_rtp/call/_ears.c, eko_bench/_engine.c): a garbage-collected object whose object
 * members are named once. The including file defines its struct as Core and the
 * X-macro CORE_OBJECTS(X), listing those members, before including this; it gets the
 * type's traverse, clear and dealloc slots (CORE_TYPE_SLOTS wires them, with its
 * core_new, into its PyTypeObject), is_none() for reading a member, and the module's
 * start: intern_names() and module_with_type(). */

#ifndef EKO_RTP_CORE_TYPE_H
#define EKO_RTP_CORE_TYPE_H

#include "_names.h" /* intern_names() */

static inline int core_traverse(Core *self, visitproc visit, void *arg)
{
#define VISIT(name) Py_VISIT(self->name);
    CORE_OBJECTS(VISIT)
#undef VISIT
    return 0;
}

static int core_clear(Core *self)
{
#define CLEAR(name) Py_CLEAR(self->name);
    CORE_OBJECTS(CLEAR)
#undef CLEAR
    return 0;
}

static void core_dealloc(Core *self)
{
    PyObject_GC_UnTrack(self);
    core_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The slots every core type's PyTypeObject has: a subclassable, collected object. */
#define CORE_TYPE_SLOTS                                                                                              \
    .tp_basicsize = sizeof(Core), .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,          \
    .tp_new = core_new, .tp_traverse = (traverseproc)core_traverse, .tp_clear = (inquiry)core_clear,                \
    .tp_dealloc = (destructor)core_dealloc

/* A member never set, or deleted from Python, reads as None. */
static inline int is_none(PyObject *value)
{
    return value == NULL || value == Py_None;
}

/* The module, with its core type ready and added as `name`; NULL raised. */
static inline PyObject *module_with_type(struct PyModuleDef *definition, PyTypeObject *type, const char *name)
{
    if (PyType_Ready(type) < 0)
        return NULL;
    PyObject *module = PyModule_Create(definition);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, name, (PyObject *)type) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}

#endif
