/* tz: UTC offsets of an IANA time zone, read from the system tz database (TZif files). */
#ifndef RELAY_TZ_H
#define RELAY_TZ_H

#include <stdint.h>

#include "relay/relay.h"

typedef struct relay_tz relay_tz_t;

/*
 * Loads zone name ("UTC", "Europe/Berlin") from $TZDIR or /usr/share/zoneinfo. Process-global TZ
 * is never touched, so two relay_t may use two zones. RELAY_ERR_CONFIG for a name that is not a
 * zone. The result is immutable: any thread may read it; free with relay_tz_free.
 */
int relay_tz_load(relay_tz_t **out, const char *name, relay_error_t *err);
void relay_tz_free(relay_tz_t *tz);
/* Seconds east of UTC at instant t (Unix seconds). After the file's last transition the file's
 * footer rule applies (POSIX TZ, e.g. "CET-1CEST,M3.5.0,M10.5.0/3"), as for "slim" files. */
int32_t relay_tz_offset(const relay_tz_t *tz, int64_t t);
/* A zone made of a POSIX TZ rule alone (tests compare it with the transition table). */
int relay_tz_from_rule(relay_tz_t **out, const char *rule);
/* The instant whose local wall-clock time is `local` (seconds since 1970-01-01 00:00 local). */
int64_t relay_tz_to_utc(const relay_tz_t *tz, int64_t local);

/* Days since 1970-01-01 of a civil date, and back (proleptic Gregorian). */
int64_t relay_days_from_civil(int64_t y, unsigned m, unsigned d);
void relay_civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d);

#endif
