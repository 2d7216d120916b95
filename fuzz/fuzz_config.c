/* fuzz_config: libFuzzer target; config.yaml from anywhere must load or fail with a message. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "relay/config.h"

static int g_fd = -1;
static char g_path[64];

/* The input is the YAML file's bytes (written to a memfd, read back by path like any file). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (g_fd < 0) {
        g_fd = memfd_create("fuzz-config.yaml", 0);
        if (g_fd < 0)
            abort();
        snprintf(g_path, sizeof g_path, "/proc/self/fd/%d", g_fd);
    }
    if (ftruncate(g_fd, 0) != 0 || pwrite(g_fd, data, size, 0) != (ssize_t)size)
        abort();
    relay_config_t *cfg = NULL;
    relay_error_t err = {0};
    int rc = relay_config_load(&cfg, g_path, "/dev/null", &err);
    if (rc == 0 && !cfg)
        abort();
    if (rc != 0 && (cfg || !err.message[0] || strlen(err.message) >= sizeof err.message))
        abort(); /* a refusal always says why, within the buffer */
    relay_config_free(cfg);
    return 0;
}
