/* routes_admin: /admin/... handed to librelay's admin REST handler. */
#include "relay/admin.h"
#include "relay/upstreams.h"
#include "server.h"

int route_admin(server_t *s, struct mg_connection *conn, server_request_t *req)
{
    relay_http_response_t resp = {0};
    int rc = relay_upstreams_admin_handle(s->relay, &req->http, &resp);
    if (rc == RELAY_ERR_NOT_FOUND)
        rc = relay_admin_handle(s->relay, &req->http, &resp);
    if (rc == RELAY_ERR_NOT_FOUND && !resp.status)
        server_write_error(conn, RELAY_ERR_NOT_FOUND, "no such admin route");
    else
        server_write_response(conn, &resp);
    relay_http_response_clear(&resp);
    return 1;
}
