/* routes_user: /api/usage... and the admin usage statistics, handed to librelay's stats handlers.
 */
#include "relay/stats.h"
#include "server.h"

int route_user(server_t *s, struct mg_connection *conn, server_request_t *req)
{
    relay_http_response_t resp = {0};
    int rc = relay_user_handle(s->relay, &req->http, &resp);
    if (rc == RELAY_ERR_NOT_FOUND && !resp.status)
        server_write_error(conn, RELAY_ERR_NOT_FOUND, "no such relay API route");
    else
        server_write_response(conn, &resp);
    relay_http_response_clear(&resp);
    return 1;
}

int route_stats_admin(server_t *s, struct mg_connection *conn, server_request_t *req)
{
    relay_http_response_t resp = {0};
    int rc = relay_stats_admin_handle(s->relay, &req->http, &resp);
    if (rc == RELAY_ERR_NOT_FOUND && !resp.status)
        return 0; /* not a statistics path: the admin handler's turn */
    server_write_response(conn, &resp);
    relay_http_response_clear(&resp);
    return 1;
}
