/* routes_ops: operational endpoints: /health. */
#include <jansson.h>
#include <stdlib.h>

#include "relay/limits.h"
#include "relay/relay.h"
#include "relay/store.h"
#include "relay/usage.h"
#include "server.h"

/*
 * While the database is away the relay still serves the keys its cache knows (unless
 * database.outage is fail_closed), so /health stays 200 and says "degraded" with the reason: a
 * load balancer or liveness probe that took a 503 for "dead" would take away the very instances
 * that can still serve. Under fail_closed nothing is served, and the status is 503.
 */
int route_health(server_t *s, struct mg_connection *conn, server_request_t *req)
{
    (void)req;
    char reason[256] = "";
    int db_ok = relay_database_state(s->relay, reason, sizeof reason) == 0;
    relay_usage_stats_t us;
    relay_usage_get_stats(s->relay, &us);
    json_t *o = json_pack("{s:s, s:s, s:s, s:s}", "status", db_ok ? "ok" : "degraded", "database",
                          db_ok ? "ok" : "down", "redis", relay_limits_redis_status(s->relay),
                          "version", relay_version());
    if (o && !db_ok) {
        json_object_set_new(o, "reason", json_string(reason));
        json_object_set_new(o, "usage_rows_queued", json_integer((json_int_t)us.depth));
    }
    char *body = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(o);
    int status = db_ok || !s->cfg->relay.db_outage_fail_closed ? 200 : 503;
    server_write_json(conn, status, body ? body : "{\"status\":\"error\"}");
    free(body);
    return 1;
}
