/* The kernel's share of a media server's work on this machine, without Python.
 *
 *     gcc -O2 -o /tmp/kernel_floor bench/kernel_floor.c
 *     /tmp/kernel_floor CALLS SECONDS per-call|batched [CALLER_CPU]
 *
 * What it measures: the CPU (user + system, getrusage) that one process pinned to
 * CPU 0 spends doing only the system calls of CALLS full-duplex G.711 calls: every
 * 20 ms it sends one 172-octet RTP datagram per call and receives the one each
 * caller sent, with nothing else per packet. A child pinned to the last CPU plays
 * the callers (a socket each: sends a datagram per call per tick, drains what it
 * gets back).
 *
 * per-call: a socket per call; sendto per frame; the receive side as the server's
 *           hub does it (epoll_wait(0), one recvmsg per ready socket, again until
 *           nothing is ready), twice per tick (the hub's 10 ms nap).
 * batched:  one socket for every call; sendmmsg of the tick's frames (1024 at most
 *           per call), recvmmsg by 64 until the socket is empty, twice per tick.
 *
 * So it is the floor under any implementation of the server on this guest, in any
 * language: whatever the server does per packet comes on top. Prints one JSON line.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define FRAME 172
#define TICK_NS 20000000L
#define BATCH 1024
#define RECV_BATCH 64

static void die(const char *what) {
    perror(what);
    exit(2);
}

static int udp_socket(struct sockaddr_in *bound) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (fd < 0) die("socket");
    int size = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    struct sockaddr_in address = {.sin_family = AF_INET};
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&address, sizeof address) < 0) die("bind");
    socklen_t length = sizeof *bound;
    getsockname(fd, (struct sockaddr *)bound, &length);
    return fd;
}

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) < 0) die("sched_setaffinity");
}

static void next_tick(struct timespec *due, long ns) {
    due->tv_nsec += ns;
    while (due->tv_nsec >= 1000000000L) {
        due->tv_nsec -= 1000000000L;
        due->tv_sec += 1;
    }
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, due, NULL) == EINTR) {
    }
}

static double cpu_seconds(void) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return usage.ru_utime.tv_sec + usage.ru_utime.tv_usec * 1e-6 + usage.ru_stime.tv_sec +
           usage.ru_stime.tv_usec * 1e-6;
}

/* Every datagram waiting on the sockets of an epoll set, one per ready socket per round. */
static long drain_rounds(int epoll_fd, struct epoll_event *events, int count, char *buffer) {
    long taken = 0;
    for (int round = 0; round < 64; round++) {
        int ready = epoll_wait(epoll_fd, events, count, 0);
        if (ready <= 0) break;
        for (int i = 0; i < ready; i++) {
            char control[64];
            struct iovec vector = {buffer, 2048};
            struct sockaddr_in source;
            struct msghdr message = {.msg_name = &source, .msg_namelen = sizeof source, .msg_iov = &vector,
                                     .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
            if (recvmsg(events[i].data.fd, &message, 0) > 0) taken++;
        }
    }
    return taken;
}

static int epoll_of(int *fds, int count) {
    int epoll_fd = epoll_create1(0);
    for (int i = 0; i < count; i++) {
        struct epoll_event event = {.events = EPOLLIN, .data.fd = fds[i]};
        if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fds[i], &event) < 0) die("epoll_ctl");
    }
    return epoll_fd;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: kernel_floor CALLS SECONDS per-call|batched [CALLER_CPU]\n");
        return 2;
    }
    int calls = atoi(argv[1]);
    int seconds = atoi(argv[2]);
    int batched = strcmp(argv[3], "batched") == 0;
    int caller_cpu = argc > 4 ? atoi(argv[4]) : 1;
    if (calls < 1 || calls > 5000 || seconds < 2 || seconds > 120) {
        fprintf(stderr, "CALLS within 1-5000 and SECONDS within 2-120\n");
        return 2;
    }
    int ticks = seconds * 50;

    struct sockaddr_in *server_addresses = calloc(calls, sizeof *server_addresses);
    struct sockaddr_in *caller_addresses = calloc(calls, sizeof *caller_addresses);
    int *server_fds = calloc(calls, sizeof(int));
    int *caller_fds = calloc(calls, sizeof(int));
    int server_count = batched ? 1 : calls;
    for (int i = 0; i < server_count; i++) server_fds[i] = udp_socket(&server_addresses[i]);
    for (int i = 0; i < calls; i++) caller_fds[i] = udp_socket(&caller_addresses[i]);
    char frame[FRAME];
    memset(frame, 0xff, sizeof frame);
    frame[0] = (char)0x80;
    char buffer[2048];

    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) {  /* the callers */
        pin(caller_cpu);
        int epoll_fd = epoll_of(caller_fds, calls);
        struct epoll_event *events = calloc(calls, sizeof *events);
        struct timespec due;
        clock_gettime(CLOCK_MONOTONIC, &due);
        for (int tick = 0; tick < ticks + 50; tick++) {
            for (int i = 0; i < calls; i++) {
                struct sockaddr_in *to = &server_addresses[batched ? 0 : i];
                sendto(caller_fds[i], frame, sizeof frame, 0, (struct sockaddr *)to, sizeof *to);
            }
            drain_rounds(epoll_fd, events, calls, buffer);
            next_tick(&due, TICK_NS / 2);
            drain_rounds(epoll_fd, events, calls, buffer);
            next_tick(&due, TICK_NS / 2);
        }
        _exit(0);
    }

    pin(0);
    int epoll_fd = batched ? -1 : epoll_of(server_fds, calls);
    struct epoll_event *events = calloc(calls, sizeof *events);
    struct mmsghdr *out = calloc(BATCH, sizeof *out);
    struct iovec *out_vectors = calloc(BATCH, sizeof *out_vectors);
    struct mmsghdr in[RECV_BATCH];
    struct iovec in_vectors[RECV_BATCH];
    struct sockaddr_in in_sources[RECV_BATCH];
    static char in_buffers[RECV_BATCH][2048];
    long sent = 0, received = 0, send_failures = 0;
    double cpu_start = 0, wall_start = 0;
    struct timespec due, now;
    clock_gettime(CLOCK_MONOTONIC, &due);
    for (int tick = 0; tick < ticks; tick++) {
        if (tick == 50) { /* a second of warm-up, then measure */
            cpu_start = cpu_seconds();
            clock_gettime(CLOCK_MONOTONIC, &now);
            wall_start = now.tv_sec + now.tv_nsec * 1e-9;
            sent = received = send_failures = 0;
        }
        if (batched) {
            for (int first = 0; first < calls; first += BATCH) {
                int count = calls - first < BATCH ? calls - first : BATCH;
                for (int i = 0; i < count; i++) {
                    out_vectors[i].iov_base = frame;
                    out_vectors[i].iov_len = sizeof frame;
                    out[i].msg_hdr = (struct msghdr){.msg_name = &caller_addresses[first + i],
                                                     .msg_namelen = sizeof(struct sockaddr_in),
                                                     .msg_iov = &out_vectors[i], .msg_iovlen = 1};
                }
                int done = sendmmsg(server_fds[0], out, count, 0);
                sent += done > 0 ? done : 0;
                send_failures += count - (done > 0 ? done : 0);
            }
        } else {
            for (int i = 0; i < calls; i++) {
                if (sendto(server_fds[i], frame, sizeof frame, 0, (struct sockaddr *)&caller_addresses[i],
                           sizeof caller_addresses[i]) == FRAME)
                    sent++;
                else
                    send_failures++;
            }
        }
        for (int half = 0; half < 2; half++) {
            if (batched) {
                for (;;) {
                    for (int i = 0; i < RECV_BATCH; i++) {
                        in_vectors[i] = (struct iovec){in_buffers[i], 2048};
                        in[i].msg_hdr = (struct msghdr){.msg_name = &in_sources[i],
                                                        .msg_namelen = sizeof in_sources[i],
                                                        .msg_iov = &in_vectors[i], .msg_iovlen = 1};
                    }
                    int got = recvmmsg(server_fds[0], in, RECV_BATCH, MSG_DONTWAIT, NULL);
                    if (got <= 0) break;
                    received += got;
                    if (got < RECV_BATCH) break;
                }
            } else {
                received += drain_rounds(epoll_fd, events, calls, buffer);
            }
            next_tick(&due, TICK_NS / 2);
        }
    }
    double cpu = cpu_seconds() - cpu_start;
    clock_gettime(CLOCK_MONOTONIC, &now);
    double wall = now.tv_sec + now.tv_nsec * 1e-9 - wall_start;
    kill(child, SIGTERM);
    waitpid(child, NULL, 0);
    long expected = (long)calls * (ticks - 50);
    printf("{\"calls\": %d, \"mode\": \"%s\", \"seconds\": %.2f, \"cpu_percent\": %.2f, "
           "\"us_per_datagram\": %.3f, \"sent\": %ld, \"send_failures\": %ld, \"received\": %ld, "
           "\"expected_each_way\": %ld}\n",
           calls, batched ? "batched" : "per-call", wall, 100 * cpu / wall, 1e6 * cpu / (double)(sent + received),
           sent, send_failures, received, expected);
    return 0;
}
