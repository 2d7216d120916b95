/* tz: a small TZif reader, so budget periods can reset at local midnight in any IANA zone. */
#include "tz.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define TZIF_MAX (512 * 1024) /* the largest zone files are ~4 KB */

/* When a POSIX TZ rule switches: Mm.w.d, Jn (no Feb 29) or n (0-based day), at local `time`. */
typedef struct tz_rule {
    char kind; /* 'M', 'J' or 'D' */
    int m, w, d;
    int32_t time; /* seconds after local midnight (may be negative or past 24 h) */
} tz_rule_t;

struct relay_tz {
    size_t n;       /* transitions */
    int64_t *at;    /* transition instants, ascending */
    int32_t *off;   /* offset in force from at[i] */
    int32_t before; /* offset before the first transition */
    /* The file's footer rule, for instants after its last transition ("slim" files stop listing
       transitions once the rule is regular, so without it DST would stop in the 2000s). */
    int has_rule, has_dst;
    int32_t std_off, dst_off; /* seconds east of UTC */
    tz_rule_t start, end;     /* DST starts (in standard time) and ends (in DST) */
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

/* ---- the POSIX TZ rule of the footer, e.g. "CET-1CEST,M3.5.0,M10.5.0/3" ---- */

static const char *rule_name(const char *p)
{
    if (*p == '<') {
        p = strchr(p, '>');
        return p ? p + 1 : NULL;
    }
    const char *s = p;
    while ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z'))
        p++;
    return p - s >= 3 ? p : NULL;
}

/* [+-]hh[:mm[:ss]] into seconds. */
static const char *rule_hms(const char *p, int32_t *out)
{
    int sign = 1, v[3] = {0, 0, 0};
    if (*p == '+' || *p == '-')
        sign = *p++ == '-' ? -1 : 1;
    for (int i = 0; i < 3; i++) {
        if (i && *p != ':')
            break;
        p += i > 0;
        if (*p < '0' || *p > '9')
            return NULL;
        while (*p >= '0' && *p <= '9' && v[i] < 1000)
            v[i] = v[i] * 10 + (*p++ - '0');
    }
    if (v[0] > 167 || v[1] > 59 || v[2] > 59)
        return NULL;
    *out = sign * (v[0] * 3600 + v[1] * 60 + v[2]);
    return p;
}

static const char *rule_int(const char *p, int *out)
{
    if (*p < '0' || *p > '9')
        return NULL;
    for (*out = 0; *p >= '0' && *p <= '9' && *out < 1000; p++)
        *out = *out * 10 + (*p - '0');
    return p;
}

static const char *rule_date(const char *p, tz_rule_t *r)
{
    r->kind = *p == 'M' ? 'M' : *p == 'J' ? 'J' : 'D';
    if (r->kind != 'D')
        p++;
    if (!(p = rule_int(p, r->kind == 'M' ? &r->m : &r->d)))
        return NULL;
    if (r->kind == 'M' &&
        (*p != '.' || !(p = rule_int(p + 1, &r->w)) || *p != '.' || !(p = rule_int(p + 1, &r->d))))
        return NULL;
    if (r->kind == 'M' && (r->m < 1 || r->m > 12 || r->w < 1 || r->w > 5 || r->d > 6))
        return NULL;
    if ((r->kind == 'J' && (r->d < 1 || r->d > 365)) || (r->kind == 'D' && r->d > 365))
        return NULL;
    r->time = 7200;
    return *p == '/' ? rule_hms(p + 1, &r->time) : p;
}

/* Parses a footer rule into tz; -1 (and no rule) when it is empty or not understood. */
static int rule_parse(const char *s, relay_tz_t *tz)
{
    int32_t off;
    const char *p = s ? rule_name(s) : NULL;
    if (!p || !(p = rule_hms(p, &off)))
        return -1;
    tz->std_off = tz->dst_off = -off; /* POSIX counts west of UTC */
    if (*p) {
        if (!(p = rule_name(p)))
            return -1;
        tz->dst_off = tz->std_off + 3600;
        if (*p && *p != ',' && (p = rule_hms(p, &off)))
            tz->dst_off = -off;
        if (!p || *p != ',' || !(p = rule_date(p + 1, &tz->start)) || *p != ',' ||
            !(p = rule_date(p + 1, &tz->end)))
            return -1;
        tz->has_dst = 1;
    }
    if (*p)
        return -1;
    tz->has_rule = 1;
    return 0;
}

/* The local day (days since 1970-01-01) a rule falls on in year y. */
static int64_t rule_day(const tz_rule_t *r, int64_t y)
{
    int64_t jan1 = relay_days_from_civil(y, 1, 1);
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (r->kind == 'J')
        return jan1 + r->d - 1 + (leap && r->d >= 60);
    if (r->kind == 'D')
        return jan1 + r->d;
    int64_t first = relay_days_from_civil(y, (unsigned)r->m, 1);
    int64_t next = r->m == 12 ? relay_days_from_civil(y + 1, 1, 1)
                              : relay_days_from_civil(y, (unsigned)r->m + 1, 1);
    int64_t wday = ((first + 4) % 7 + 7) % 7;
    int64_t day = first + (r->d - wday + 7) % 7 + (int64_t)(r->w - 1) * 7;
    while (day >= next)
        day -= 7; /* week 5 means the last such weekday of the month */
    return day;
}

static int32_t rule_offset(const relay_tz_t *tz, int64_t t)
{
    if (!tz->has_dst)
        return tz->std_off;
    int64_t y;
    unsigned m, d;
    int64_t lt = t + tz->std_off;
    relay_civil_from_days(lt / 86400 - (lt % 86400 < 0), &y, &m, &d);
    int64_t start = rule_day(&tz->start, y) * 86400 + tz->start.time - tz->std_off;
    int64_t end = rule_day(&tz->end, y) * 86400 + tz->end.time - tz->dst_off;
    int dst = start < end ? (t >= start && t < end) : !(t >= end && t < start);
    return dst ? tz->dst_off : tz->std_off;
}

int relay_tz_from_rule(relay_tz_t **out, const char *rule)
{
    *out = calloc(1, sizeof **out);
    if (!*out)
        return RELAY_ERR_NOMEM;
    if (rule_parse(rule, *out) != 0) {
        relay_tz_free(*out);
        *out = NULL;
        return RELAY_ERR_INVALID;
    }
    return 0;
}

/* The footer after the 64-bit block: "\n<rule>\n". */
static void parse_footer(const unsigned char *f, const unsigned char *end, relay_tz_t *tz)
{
    char rule[128];
    if (f >= end || *f != '\n')
        return;
    const unsigned char *nl = memchr(f + 1, '\n', (size_t)(end - f - 1));
    if (!nl || (size_t)(nl - f - 1) >= sizeof rule)
        return;
    memcpy(rule, f + 1, (size_t)(nl - f - 1));
    rule[nl - f - 1] = '\0';
    relay_tz_t parsed = {0};
    if (rule_parse(rule, &parsed) == 0) {
        tz->has_rule = 1;
        tz->has_dst = parsed.has_dst;
        tz->std_off = parsed.std_off;
        tz->dst_off = parsed.dst_off;
        tz->start = parsed.start;
        tz->end = parsed.end;
    }
}

/* Parses the version-2+ (64-bit) block when present, else the version-1 block. */
static int parse(const unsigned char *b, size_t len, relay_tz_t *tz)
{
    if (memcmp(b, "TZif", 4) != 0)
        return -1;
    size_t tsize = 4;
    const unsigned char *h = b;
    uint32_t c[6];
    size_t body = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < 6; i++)
            c[i] = be32(h + 20 + 4 * i);
        body = (size_t)c[3] * tsize + c[3] + (size_t)c[4] * 6 + c[5] + (size_t)c[2] * (tsize + 4) +
               c[1] + c[0];
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
    if (tsize == 8)
        parse_footer(h + 44 + body, b + len, tz);
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
    if (tz->has_rule && (!tz->n || t >= tz->at[tz->n - 1]))
        return rule_offset(tz, t);
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
