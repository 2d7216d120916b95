/* test_http: the route patterns every librelay REST table uses (relay_http_path_match) and the
 * route listings built from those tables. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "relay/admin.h"
#include "relay/http.h"
#include "relay/stats.h"

static void test_literal_patterns(void **state)
{
    (void)state;
    assert_true(relay_http_path_match("/admin/login", "/admin/login", NULL, 0));
    assert_true(relay_http_path_match("/admin/login", "/admin/login/", NULL, 0));
    assert_false(relay_http_path_match("/admin/login", "/admin/login//", NULL, 0));
    assert_false(relay_http_path_match("/admin/login", "/admin/logins", NULL, 0));
    assert_false(relay_http_path_match("/admin/login", "/admin/logi", NULL, 0));
    assert_false(relay_http_path_match("/admin/login", "/admin", NULL, 0));
    assert_true(relay_http_path_match("/", "/", NULL, 0));
    assert_false(relay_http_path_match(NULL, "/", NULL, 0));
}

static void test_parameter_segment(void **state)
{
    (void)state;
    char arg[8];
    assert_true(relay_http_path_match("/k/{id}/stats", "/k/abc/stats", arg, sizeof arg));
    assert_string_equal(arg, "abc");
    assert_true(relay_http_path_match("/k/{id}", "/k/abc/", arg, sizeof arg));
    assert_string_equal(arg, "abc");
    assert_false(relay_http_path_match("/k/{id}", "/k/", arg, sizeof arg));         /* empty */
    assert_false(relay_http_path_match("/k/{id}", "/k/a/b", arg, sizeof arg));      /* two segs */
    assert_false(relay_http_path_match("/k/{id}", "/k/12345678", arg, sizeof arg)); /* 8 + NUL */
    assert_true(relay_http_path_match("/k/{id}", "/k/1234567", arg, sizeof arg));
    assert_false(relay_http_path_match("/k/{id}", "/k/abc", NULL, 0)); /* nowhere to put it */
    assert_false(relay_http_path_match("/k/{id", "/k/abc", arg, sizeof arg)); /* bad pattern */
    assert_false(relay_http_path_match("/k/{id}/stats", "/k/abc/usage", arg, sizeof arg));
}

typedef struct {
    int n, with_param, bad;
} tally_t;

static void count(void *ud, const char *method, const char *pattern)
{
    tally_t *t = ud;
    t->n++;
    t->with_param += strchr(pattern, '{') != NULL;
    /* every listed pattern matches itself once {x} is filled in */
    char path[256], arg[64];
    size_t j = 0;
    for (const char *p = pattern; *p && j + 2 < sizeof path; p++) {
        if (*p == '{') {
            path[j++] = 'x';
            p = strchr(p, '}');
        } else {
            path[j++] = *p;
        }
    }
    path[j] = '\0';
    if (!relay_http_path_match(pattern, path, arg, sizeof arg) || !method[0] || pattern[0] != '/')
        t->bad++;
}

static void test_route_tables(void **state)
{
    (void)state;
    tally_t a = {0}, s = {0};
    relay_admin_routes(count, &a);
    relay_stats_routes(count, &s);
    assert_int_equal(a.bad + s.bad, 0);
    assert_true(a.n >= 18);
    assert_true(a.with_param > 0);
    assert_int_equal(s.n, 11);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_literal_patterns),
        cmocka_unit_test(test_parameter_segment),
        cmocka_unit_test(test_route_tables),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
