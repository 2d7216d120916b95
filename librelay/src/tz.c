/* tz: a small TZif reader, so budget periods can reset at local midnight in any IANA zone. */
#include "tz.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define TZIF_MAX (512 * 1024) /* the largest zone files are ~4 KB */

struct relay_tz {
    size_t n;       /* transitions */
    int64_t *at;    /* transition instants, ascending */
    int32_t *off;   /* offset in force from at[i] */
    int32_t before; /* offset before the first transition */
};

int64_t relay_days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

void relay_civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int64_t be64(const unsigned char *p)
{
    return (int64_t)((uint64_t)be32(p) << 32 | be32(p + 4));
}

/* Names are paths below the zone directory: no "..", no leading '/', plain characters only. */
static int name_ok(const char *name)
{
    if (!name || !*name || name[0] == '/' || strstr(name, "..") || strlen(name) > 128)
        return 0;
    for (const char *c = name; *c; c++)
        if (!(strchr("/_+-", *c) || (*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') ||
              (*c >= '0' && *c <= '9')))
            return 0;
    return 1;
}

static int read_file(const char *path, unsigned char **buf, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    *buf = malloc(TZIF_MAX);
    *len = *buf ? fread(*buf, 1, TZIF_MAX, f) : 0;
    fclose(f);
    return *buf && *len > 44 ? 0 : -1;
}

/* Parses the version-2+ (64-bit) block when present, else the version-1 block. */
static int parse(const unsigned char *b, size_t len, relay_tz_t *tz)
{
    if (memcmp(b, "TZif", 4) != 0)
        return -1;
    size_t tsize = 4;
    const unsigned char *h = b;
    uint32_t c[6];
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < 6; i++)
            c[i] = be32(h + 20 + 4 * i);
        size_t body = (size_t)c[3] * tsize + c[3] + (size_t)c[4] * 6 + c[5] +
                      (size_t)c[2] * (tsize + 4) + c[1] + c[0];
        if ((size_t)(h - b) + 44 + body > len)
            return -1;
        if (pass == 1 || b[4] < '2')
            break;
        h += 44 + body; /* skip the 32-bit block */
        tsize = 8;
        if ((size_t)(h - b) + 44 > len || memcmp(h, "TZif", 4) != 0)
            return -1;
    }
    uint32_t timecnt = c[3], typecnt = c[4];
    if (typecnt == 0)
        return -1;
    const unsigned char *times = h + 44, *idx = times + timecnt * tsize, *types = idx + timecnt;
    tz->at = calloc(timecnt + 1, sizeof *tz->at);
    tz->off = calloc(timecnt + 1, sizeof *tz->off);
    if (!tz->at || !tz->off)
        return -1;
    for (uint32_t i = 0; i < timecnt; i++) {
        tz->at[i] = tsize == 8 ? be64(times + 8 * i) : (int32_t)be32(times + 4 * i);
        if (idx[i] >= typecnt)
            return -1;
        tz->off[i] = (int32_t)be32(types + 6 * idx[i]);
    }
    tz->n = timecnt;
    tz->before = (int32_t)be32(types);
    return 0;
}

void relay_tz_free(relay_tz_t *tz)
{
    if (!tz)
        return;
    free(tz->at);
    free(tz->off);
    free(tz);
}

int relay_tz_load(relay_tz_t **out, const char *name, relay_error_t *err)
{
    *out = NULL;
    relay_tz_t *tz = calloc(1, sizeof *tz);
    if (!tz)
        return relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
    if (name && (strcmp(name, "UTC") == 0 || strcmp(name, "Etc/UTC") == 0)) {
        *out = tz; /* no file needed: a container without tzdata still runs in UTC */
        return 0;
    }
    if (!name_ok(name)) {
        relay_tz_free(tz);
        return relay_error_set(err, RELAY_ERR_CONFIG, "unknown time zone '%.64s'",
                               name ? name : "");
    }
    const char *dir = getenv("TZDIR");
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir && *dir ? dir : "/usr/share/zoneinfo", name);
    unsigned char *buf = NULL;
    size_t len = 0;
    int rc = read_file(path, &buf, &len) == 0 ? parse(buf, len, tz) : -1;
    free(buf);
    if (rc) {
        relay_tz_free(tz);
        return relay_error_set(err, RELAY_ERR_CONFIG,
                               "unknown time zone '%s' (not in the system tz database)", name);
    }
    *out = tz;
    return 0;
}

int32_t relay_tz_offset(const relay_tz_t *tz, int64_t t)
{
    if (!tz->n || t < tz->at[0])
        return tz->before;
    size_t lo = 0, hi = tz->n; /* the last transition at or before t */
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (tz->at[mid] <= t)
            lo = mid;
        else
            hi = mid;
    }
    return tz->off[lo];
}

int64_t relay_tz_to_utc(const relay_tz_t *tz, int64_t local)
{
    /* Two steps settle the offset except inside a DST gap, where the later instant is taken. */
    int64_t t = local - relay_tz_offset(tz, local);
    return local - relay_tz_offset(tz, t);
}
