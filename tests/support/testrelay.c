/* testrelay: helpers every cmocka suite shares to build a relay_t and clean up after it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>

#include "testrelay.h"

relay_t *testrelay_new(const relay_options_t *o)
{
    relay_t *r = NULL;
    relay_error_t err = {0};
    if (relay_new(&r, o, &err))
        fail_msg("relay_new: %s", err.message);
    return r;
}

relay_t *testrelay_new_in_tmpdir(char *dir, relay_options_t *o)
{
    assert_non_null(mkdtemp(dir));
    o->data_dir = dir;
    return testrelay_new(o);
}

void testrelay_free_dir(relay_t *r, const char *dir)
{
    relay_free(r);
    testrelay_rm_tree(dir);
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

int testrelay_rm_tree(const char *dir)
{
    /* Depth first, so each directory is empty by the time it is removed; links not followed. */
    return nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS) == 0 ? 0 : -1;
}
