/* veil-echo: the test guest's UDP and TCP echo responder on one port, IPv4 and IPv6.
 * busybox-static's nc has no UDP and no udpsvd/tcpsvd, hence this (built static by
 * controller/lab/guest/image.py with Debian's gcc). Each TCP connection gets a child
 * process; datagrams are answered by the parent. Usage: veil-echo PORT */
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int listen_on(int type, int port) {
    struct sockaddr_in6 a;
    int fd = socket(AF_INET6, type, 0), off = 0, on = 1;
    if (fd < 0) { perror("veil-echo: socket"); exit(1); }
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    memset(&a, 0, sizeof a);
    a.sin6_family = AF_INET6;
    a.sin6_port = htons(port);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("veil-echo: bind"); exit(1); }
    if (type == SOCK_STREAM && listen(fd, 64) < 0) { perror("veil-echo: listen"); exit(1); }
    return fd;
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 7;
    char buf[65536];
    struct pollfd fds[2];
    signal(SIGCHLD, SIG_IGN); /* children are reaped by the kernel */
    fds[0].fd = listen_on(SOCK_DGRAM, port);
    fds[1].fd = listen_on(SOCK_STREAM, port);
    fds[0].events = fds[1].events = POLLIN;
    for (;;) {
        if (poll(fds, 2, -1) < 0) continue;
        if (fds[0].revents & POLLIN) {
            struct sockaddr_storage peer;
            socklen_t len = sizeof peer;
            ssize_t n = recvfrom(fds[0].fd, buf, sizeof buf, 0, (struct sockaddr *)&peer, &len);
            if (n >= 0) sendto(fds[0].fd, buf, (size_t)n, 0, (struct sockaddr *)&peer, len);
        }
        if (fds[1].revents & POLLIN) {
            int c = accept(fds[1].fd, NULL, NULL);
            if (c < 0) continue;
            if (fork() == 0) {
                ssize_t n;
                close(fds[0].fd);
                close(fds[1].fd);
                while ((n = read(c, buf, sizeof buf)) > 0)
                    if (write(c, buf, (size_t)n) != n) break;
                _exit(0);
            }
            close(c);
        }
    }
}
