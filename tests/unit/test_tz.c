/* test_tz: the TZif reader and its POSIX footer rule against the system tz database. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>

#include "tz.h"

/* The footer rules of these zones, as their TZif files carry them (tzdata 2025). */
static const struct {
    const char *zone, *rule;
} ZONES[] = {
    {"Europe/Berlin", "CET-1CEST,M3.5.0,M10.5.0/3"},
    {"America/New_York", "EST5EDT,M3.2.0,M11.1.0"},
    {"Australia/Sydney", "AEST-10AEDT,M10.1.0,M4.1.0/3"}, /* southern: DST across new year */
    {"America/St_Johns", "NST3:30NDT,M3.2.0,M11.1.0"},    /* half-hour offset */
    {"Pacific/Kiritimati", "<+14>-14"},                   /* no DST */
};

/* Every 3 hours of 2027-2036, and the hour around each change: the rule alone must give the
   offsets the file's transition table lists (a "fat" file lists them until 2037). */
static void test_rule_matches_transition_table(void **state)
{
    (void)state;
    int64_t from = relay_days_from_civil(2027, 1, 1) * 86400;
    int64_t to = relay_days_from_civil(2037, 1, 1) * 86400;
    for (size_t z = 0; z < sizeof ZONES / sizeof ZONES[0]; z++) {
        relay_tz_t *file, *rule;
        relay_error_t err = {0};
        if (relay_tz_load(&file, ZONES[z].zone, &err) != 0)
            skip(); /* no tz database here */
        assert_int_equal(relay_tz_from_rule(&rule, ZONES[z].rule), 0);
        for (int64_t t = from; t < to; t += 900) {
            int32_t a = relay_tz_offset(file, t), b = relay_tz_offset(rule, t);
            if (a != b)
                fail_msg("%s at %lld: table %d, rule %d", ZONES[z].zone, (long long)t, a, b);
        }
        relay_tz_free(file);
        relay_tz_free(rule);
    }
}

/* Past the table's last transition (2037 here; the 2000s in "slim" files) the rule goes on. */
static void test_after_the_table_the_rule_holds(void **state)
{
    (void)state;
    relay_tz_t *tz;
    relay_error_t err = {0};
    if (relay_tz_load(&tz, "Europe/Berlin", &err) != 0)
        skip();
    int64_t july = relay_days_from_civil(2040, 7, 1) * 86400,
            jan = relay_days_from_civil(2041, 1, 1) * 86400;
    assert_int_equal(relay_tz_offset(tz, july), 7200);
    assert_int_equal(relay_tz_offset(tz, jan), 3600);
    /* 2040-03-25 01:00 UTC is the change (last Sunday of March, 02:00 CET). */
    int64_t change = relay_days_from_civil(2040, 3, 25) * 86400 + 3600;
    assert_int_equal(relay_tz_offset(tz, change - 1), 3600);
    assert_int_equal(relay_tz_offset(tz, change), 7200);
    relay_tz_free(tz);
}

static void test_bad_rules_and_names(void **state)
{
    (void)state;
    relay_tz_t *tz;
    assert_int_equal(relay_tz_from_rule(&tz, "CET-1CEST,M3.5.0"), RELAY_ERR_INVALID);
    assert_int_equal(relay_tz_from_rule(&tz, "X-1"), RELAY_ERR_INVALID);
    assert_int_equal(relay_tz_from_rule(&tz, "CET-1CEST,M13.5.0,M10.5.0"), RELAY_ERR_INVALID);
    relay_error_t err = {0};
    assert_int_equal(relay_tz_load(&tz, "../etc/passwd", &err), RELAY_ERR_CONFIG);
    assert_int_equal(relay_tz_load(&tz, "/etc/localtime", &err), RELAY_ERR_CONFIG);
    assert_int_equal(relay_tz_load(&tz, "Mars/Olympus_Mons", &err), RELAY_ERR_CONFIG);
    assert_int_equal(relay_tz_load(&tz, "UTC", &err), 0);
    assert_int_equal(relay_tz_offset(tz, 0), 0);
    relay_tz_free(tz);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rule_matches_transition_table),
        cmocka_unit_test(test_after_the_table_the_rule_holds),
        cmocka_unit_test(test_bad_rules_and_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
