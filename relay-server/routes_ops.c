/* routes_ops: operational endpoints: /health. */
#include <jansson.h>
#include <stdlib.h>

#include "relay/limits.h"
#include "relay/relay.h"
#include "relay/store.h"
#include "server.h"

int route_health(server_t *s, struct mg_connection *conn, server_request_t *req)
{
    (void)req;
    int db_ok = relay_health_database(s->relay) == 0;
    json_t *o = json_pack("{s:s, s:s, s:s, s:s}", "status", db_ok ? "ok" : "degraded", "database",
                          db_ok ? "ok" : "down", "redis", relay_limits_redis_status(s->relay),
                          "version", relay_version());
    char *body = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(o);
    server_write_json(conn, db_ok ? 200 : 503, body ? body : "{\"status\":\"error\"}");
    free(body);
    return 1;
}
