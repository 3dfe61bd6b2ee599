/* A batch application for the benchmarks, in C: FLOATS_MIB MiB of float64 arrays, as a solver holds
 * them, and ticker.py's timestamps.
 *
 * Its memory: one array of doubles, a field on a grid: a few waves and a little noise, then three
 * sweeps of smoothing (u[i] = (u[i-1] + 2 u[i] + u[i+1]) / 4), as a few steps of a heat equation leave
 * it; resident before the first line. Then, like ticker.py, CLOCK_MONOTONIC in whole microseconds every
 * FLOATS_INTERVAL_US microseconds (2000), one plain integer a line, flushed.
 *
 * Build: cc -O2 -o floats floats.c -lm. A job runs it through native.py (tests.helpers.Site.start_job
 * starts Python applications).
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define PI 3.14159265358979323846

static uint64_t state = 88172645463325252ULL;

static double uniform(void) /* xorshift64: [0, 1) */
{
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return (double)(state >> 11) / 9007199254740992.0;
}

int main(void)
{
    const char *mib_text = getenv("FLOATS_MIB");
    const char *interval_text = getenv("FLOATS_INTERVAL_US");
    size_t mib = mib_text ? strtoul(mib_text, NULL, 10) : 64;
    long interval_us = interval_text ? strtol(interval_text, NULL, 10) : 2000;
    size_t n = mib * 1048576 / sizeof(double);
    double *u = malloc(n * sizeof(double));
    if (u == NULL) {
        perror("malloc");
        return 1;
    }
    state ^= (uint64_t)time(NULL);
    for (size_t i = 0; i < n; i++) {
        double x = (double)i / (double)n;
        u[i] = sin(2 * PI * 50 * x) + 0.5 * cos(2 * PI * 313 * x) + 0.25 * sin(2 * PI * 4099 * x)
               + 1e-3 * (uniform() - 0.5);
    }
    for (int sweep = 0; sweep < 3; sweep++) {
        double previous = u[0];
        for (size_t i = 1; i + 1 < n; i++) {
            double here = u[i];
            u[i] = (previous + 2 * here + u[i + 1]) / 4;
            previous = here;
        }
    }
    struct timespec pause = {interval_us / 1000000, (interval_us % 1000000) * 1000};
    for (;;) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        printf("%lld\n", (long long)now.tv_sec * 1000000 + now.tv_nsec / 1000);
        fflush(stdout);
        nanosleep(&pause, NULL);
    }
}
