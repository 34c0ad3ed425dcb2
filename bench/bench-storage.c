/* Storage benchmark: how many 4 KiB messages per second the store appends
 * durably with group commit, compared with the machine's raw synced-write
 * rate measured in the same run on the same filesystem.
 *
 *   bench-storage [-d DIR] [-t SECONDS] [-r ROUNDS] [-s SIZE] [-b BATCH]
 *
 * For each batch size B in 1, 8, 64: append B messages (store-assigned UIDs,
 * 4 KiB texts) then make them durable, repeated for SECONDS (default 1), in
 * a fresh store; ROUNDS (default 5) rounds, reporting medians.  Two ways:
 * synchronous (stor_sync() after each batch) and pipelined (what starlingd
 * does: stor_sync_start() after each batch, the fsync in one of storage's
 * helper threads while the next batch is appended, waiting only when all
 * are busy).  Only messages reported durable count.  The raw rate is a
 * loop of write(4 KiB) + fdatasync() appending to one file in
 * DIR, which is what one synced message costs at best.  The goals (issue 2),
 * judged on the pipelined figures: batch 64 at least 20x the raw rate,
 * batch 1 at least 80% of it. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/clock.h"
#include "lib/xalloc.h"
#include "storage/storage.h"

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st; (void)flag; (void)ftw;
	return remove(path);
}

static void rmtree(const char *path)
{
	nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

#define MAX_ROUNDS 20

static int dbl_cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double median(const double *v, int n)
{
	double s[MAX_ROUNDS];
	memcpy(s, v, (size_t)n * sizeof(double));
	qsort(s, (size_t)n, sizeof(double), dbl_cmp);
	return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

static void usage(void)
{
	fprintf(stderr, "usage: bench-storage [-d DIR] [-t SECONDS] [-r ROUNDS] [-s MESSAGE_SIZE] [-b ONLY_BATCH]\n");
	exit(2);
}

/* Appends size-byte blocks with fdatasync after each, for secs seconds. */
static double raw_rate(const char *dir, size_t size, double secs)
{
	char *path = xasprintf("%s/raw-sync-test", dir);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		fprintf(stderr, "%s: %s\n", path, strerror(errno));
		exit(1);
	}
	unsigned char *block = xmalloc(size);
	memset(block, 'r', size);
	uint64_t start = clock_mono_us(), end = start + (uint64_t)(secs * 1e6), now;
	unsigned long n = 0;
	do {
		if (write(fd, block, size) != (ssize_t)size || fdatasync(fd) < 0) {
			fprintf(stderr, "%s: %s\n", path, strerror(errno));
			exit(1);
		}
		n++;
		now = clock_mono_us();
	} while (now < end);
	close(fd);
	unlink(path);
	free(path);
	free(block);
	return n / ((now - start) / 1e6);
}

static void count_durable(void *ctx, bool ok)
{
	if (!ok) {
		fprintf(stderr, "sync failed\n");
		exit(1);
	}
	(*(unsigned long *)ctx)++;
}

/* Waits (bounded) for a sync in flight to end, and finishes it. */
static void wait_sync(struct stor_db *db)
{
	struct pollfd p = { .fd = stor_sync_fd(db), .events = POLLIN };
	if (poll(&p, 1, 60000) < 0 && errno != EINTR) {
		perror("poll");
		exit(1);
	}
	stor_sync_finish(db);
}

/* Appends batches of messages for secs seconds and returns messages made
 * durable per second.  Synchronous: each batch then stor_sync().
 * Pipelined, as starlingd's loop does it: each batch then a sync started in
 * storage's helper thread, the next batch appended while it runs (waiting
 * for it only before starting the next). */
static double store_rate(const char *dir, unsigned batch, size_t size, double secs,
			 bool pipelined)
{
	char *path = xasprintf("%s/store-batch-%u", dir, batch);
	struct stor_settings set;
	struct stor_db *db;
	char *err;
	const char *error;
	memset(&set, 0, sizeof(set));
	set.dir = path;
	rmtree(path); /* left over from an interrupted run */
	if (stor_open(&set, &db, &err) < 0) {
		fprintf(stderr, "%s\n", err);
		exit(1);
	}
	struct stor_mailbox_create c;
	struct stor_mailbox mb;
	memset(&c, 0, sizeof(c));
	c.user = "bench";
	c.name = "INBOX";
	if (stor_mailbox_create(db, &c, &mb, &error) < 0 || stor_sync(db, &error) < 0 ||
	    (pipelined && stor_sync_fd(db) < 0)) {
		fprintf(stderr, "%s\n", error);
		exit(1);
	}
	unsigned char *text = xmalloc(size);
	for (size_t i = 0; i < size; i++)
		text[i] = (unsigned char)('a' + i % 26);
	struct stor_append a;
	memset(&a, 0, sizeof(a));
	a.text = text;
	a.text_len = size;
	a.internaldate = 1700000000;
	uint64_t start = clock_mono_us(), end = start + (uint64_t)(secs * 1e6), now;
	unsigned long n = 0, durable = 0;
	uint64_t sync_us = 0;
	do {
		for (unsigned i = 0; i < batch; i++) {
			/* Distinct texts, as real mail would be. */
			memcpy(text, &n, sizeof(n));
			if (stor_msg_append(db, &mb.guid, &a, NULL, NULL, &error) < 0) {
				fprintf(stderr, "append: %s\n", error);
				exit(1);
			}
			stor_on_durable(db, count_durable, &durable);
			n++;
		}
		uint64_t t0 = clock_mono_us();
		if (pipelined) {
			/* As starlingd's loop: a sync starts at once if a helper
			 * thread is free; else the batch is written out now and
			 * its sync starts when one ends. */
			int started = stor_sync_start(db);
			for (int w = 0; started == 0 && stor_sync_busy(db) && w < 100; w++) {
				wait_sync(db);
				started = stor_sync_start(db);
			}
			if (started <= 0) {
				fprintf(stderr, "sync failed\n");
				exit(1);
			}
		} else if (stor_sync(db, &error) < 0) {
			fprintf(stderr, "sync: %s\n", error);
			exit(1);
		}
		sync_us += clock_mono_us() - t0;
		now = clock_mono_us();
	} while (now < end);
	/* Only durable messages count. */
	if (stor_sync(db, &error) < 0) {
		fprintf(stderr, "sync: %s\n", error);
		exit(1);
	}
	now = clock_mono_us();
	if (durable != n) {
		fprintf(stderr, "%lu of %lu appends reported durable\n", durable, n);
		exit(1);
	}
	printf("  batch %2u %s: %.1f us per message, %.1f of them waiting for the sync\n", batch,
	       pipelined ? "pipelined" : "synchronous", (now - start) / (double)n,
	       sync_us / (double)n);
	stor_mailbox_free(&mb);
	stor_close(&db);
	rmtree(path);
	/* The deletion's work (discards, metadata) happens now, not during
	 * the next measurement. */
	sync();
	free(text);
	free(path);
	return n / ((now - start) / 1e6);
}

int main(int argc, char **argv)
{
	const char *dir = NULL;
	double secs = 1;
	int rounds = 5;
	size_t size = 4096;
	unsigned only = 0;
	int c;
	while ((c = getopt(argc, argv, "d:t:r:s:b:")) != -1) {
		switch (c) {
		case 'd': dir = optarg; break;
		case 't': secs = atof(optarg); break;
		case 'r': rounds = atoi(optarg); break;
		case 's': size = (size_t)strtoul(optarg, NULL, 10); break;
		case 'b': only = (unsigned)strtoul(optarg, NULL, 10); break;
		default: usage();
		}
	}
	if (optind != argc || secs <= 0 || secs > 600 || rounds < 1 || rounds > MAX_ROUNDS || size == 0 || size > 64 * 1024 * 1024)
		usage();
	char *tmp = NULL;
	if (dir == NULL) {
		const char *t = getenv("TMPDIR");
		tmp = xasprintf("%s/bench-storage-XXXXXX", t != NULL && *t != '\0' ? t : "/var/tmp");
		if (mkdtemp(tmp) == NULL) {
			fprintf(stderr, "mkdtemp %s: %s\n", tmp, strerror(errno));
			return 1;
		}
		dir = tmp;
	}
	printf("storage benchmark: %zu-byte messages, %d rounds of %.1f s per measurement, in %s\n",
	       size, rounds, secs, dir);
	/* Raw and store measurements alternate, round after round, and the
	 * medians are compared, so that load from other processes drifting
	 * during the run affects both sides alike. */
	static const unsigned batches[] = { 1, 8, 64 };
	static const char *const modes[] = { "synchronous", "pipelined" };
	double raw[MAX_ROUNDS], rates[2][3][MAX_ROUNDS];
	for (int r = 0; r < rounds; r++) {
		raw[r] = raw_rate(dir, size, secs);
		printf("round %d: raw %.0f/s\n", r + 1, raw[r]);
		for (int m = 0; m < 2; m++) {
			for (int i = 0; i < 3; i++)
				rates[m][i][r] = only == 0 || only == batches[i] ?
					store_rate(dir, batches[i], size, secs, m == 1) : 0;
		}
	}
	double raw_med = median(raw, rounds), med[2][3];
	printf("raw synced writes (write %zu B + fdatasync), median: %.0f/s\n", size, raw_med);
	for (int m = 0; m < 2; m++) {
		for (int i = 0; i < 3; i++) {
			/* Each round's store rate over the same round's raw rate:
			 * the spread shows how much the disk drifted. */
			double lo = 0, hi = 0;
			for (int r = 0; r < rounds; r++) {
				double x = rates[m][i][r] / raw[r];
				lo = r == 0 || x < lo ? x : lo;
				hi = r == 0 || x > hi ? x : hi;
			}
			med[m][i] = median(rates[m][i], rounds);
			printf("%-11s batch %2u, median: %8.0f messages/s  (%.2fx raw; rounds %.2f-%.2fx)\n",
			       modes[m], batches[i], med[m][i], med[m][i] / raw_med, lo, hi);
		}
	}
	/* starlingd commits pipelined; stor_sync() after every batch is what
	 * it does only at shutdown and at the end of a resync. */
	printf("goal batch 64 >= 20x raw (pipelined): %s (%.1fx); goal batch 1 >= 0.8x raw "
	       "(pipelined): %s (%.2fx); synchronous for reference: %.1fx, %.2fx\n",
	       med[1][2] >= 20 * raw_med ? "met" : "NOT met", med[1][2] / raw_med,
	       med[1][0] >= 0.8 * raw_med ? "met" : "NOT met", med[1][0] / raw_med,
	       med[0][2] / raw_med, med[0][0] / raw_med);
	if (tmp != NULL) {
		rmtree(tmp);
		free(tmp);
	}
	return 0;
}
