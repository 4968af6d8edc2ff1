/* Interned names for the compiled twins (eko_rtp/_core_type.h's core types and
 * eko_rtp/_values.h's parsers): each static filled once when the module starts. */

#ifndef EKO_RTP_NAMES_H
#define EKO_RTP_NAMES_H

/* Each name interned into its static; 0, or -1 raised. */
typedef struct {
    PyObject **name;
    const char *text;
} CoreName;

static inline int intern_names(const CoreName *names, size_t count)
{
    for (size_t i = 0; i < count; i++)
        if (*names[i].name == NULL && (*names[i].name = PyUnicode_InternFromString(names[i].text)) == NULL)
            return -1;
    return 0;
}

#endif
