/* A sample target: counts up once every interval, appending each number to a log file it
 * keeps open (O_APPEND), and keeps its state only in memory. After a checkpoint and restore
 * the count must go on with no gap and no repeat.
 *   counter LOGFILE [INTERVAL_MS]          (default 200 ms)
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: counter LOGFILE [INTERVAL_MS]\n");
        return 2;
    }
    long interval_ms = argc > 2 ? atol(argv[2]) : 200;
    int log = open(argv[1], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log < 0) {
        perror(argv[1]);
        return 1;
    }
    printf("ready pid=%d\n", getpid());
    fflush(stdout);
    struct timespec pause = { interval_ms / 1000, (interval_ms % 1000) * 1000000L };
    for (unsigned long count = 1;; count++) {
        char line[32];
        int n = snprintf(line, sizeof line, "%lu\n", count);
        if (write(log, line, (size_t)n) != n) return 1;
        nanosleep(&pause, NULL);
    }
}
