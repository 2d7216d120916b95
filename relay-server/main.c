/* relay-server: placeholder entry point until the server shell lands (see issue 2). */
#include <stdio.h>
#include "relay/relay.h"
int main(void)
{
    printf("relay-server %s\n", relay_version());
    return 0;
}
