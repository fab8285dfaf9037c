/* hello-http: the smallest web app there is, to ship to a cluster. Answers every request on
 * port 8080 with one line; exits on SIGTERM (the default action), as a pod is stopped. */
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static const char reply[] =
    "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 16\r\nConnection: close\r\n\r\n"
    "hello from kind\n";

int main(void) {
    int one = 1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(8080), .sin_addr = {INADDR_ANY}};
    int server = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(server, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (server < 0 || bind(server, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(server, 16) < 0) {
        perror("hello-http: cannot listen on 8080");
        return 1;
    }
    printf("hello-http: listening on 8080\n");
    fflush(stdout);
    for (;;) {
        char request[4096];
        int client = accept(server, NULL, NULL);
        if (client < 0)
            continue;
        (void)read(client, request, sizeof request); /* the request itself does not matter */
        (void)write(client, reply, strlen(reply));
        close(client);
    }
}
