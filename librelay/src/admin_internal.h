/* admin_internal: what other modules' admin routes share with admin.c. */
#ifndef RELAY_ADMIN_INTERNAL_H
#define RELAY_ADMIN_INTERNAL_H

#include "internal.h"

/* Records a change in the audit log (details: a JSON object text or NULL). A failed write is
 * logged, not answered: the change itself already happened. */
void relay_admin_audit(relay_t *r, const char *actor, const char *client_ip, const char *action,
                       const char *target, const char *details);

#endif
