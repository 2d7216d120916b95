/* modules: the start/stop hooks of librelay's modules, in start order (see relay.c). */
#ifndef RELAY_MODULES_H
#define RELAY_MODULES_H

#include "internal.h"

/* Each module appends its pair here when it lands; stop must tolerate a start that never ran. */
#define RELAY_MODULES                                                                                   \
    {                                                                                                   \
        {"none", relay_noop_start, relay_noop_stop},                                                    \
    }

static inline int relay_noop_start(relay_t *r, relay_error_t *err)
{
    (void)r;
    (void)err;
    return 0;
}
static inline void relay_noop_stop(relay_t *r)
{
    (void)r;
}

#endif
