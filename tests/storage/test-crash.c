/* Crash test of storage/: a child process appends, changes flags and
 * expunges in a loop, in group-commit batches, and reports through a pipe
 * each operation it is about to do ("intent") and, once the batch is
 * durable, how many operations are acknowledged ("ack").  Every other
 * round the child commits as starlingd does: syncs started in storage's
 * helper threads, several in flight, acknowledged by their callbacks.  The parent
 * kills it with SIGKILL at a random moment, reopens the store and checks:
 *   - the store equals the state after every acknowledged operation plus a
 *     prefix of the unacknowledged ones (so nothing acknowledged is lost
 *     and nothing is half-applied);
 *   - the mailbox record agrees with its messages (stor_mailbox_check:
 *     counts, unseen, digest recomputed, UIDNEXT above every UID,
 *     HIGHESTMODSEQ at least every modseq, indexes, tombstones);
 *   - every message's text is there with the right bytes.
 * The store carries over from round to round, with small journal segments so
 * that the kills also hit segment switches, deletions and compaction. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lib/clock.h"
#include "lib/xalloc.h"
#include "storage/storage-private.h"
#include "storage/storage.h"
#include "tests/testutil.h"

#define ROUNDS 24
#define MAX_BATCH 8
/* Intents not yet acknowledged: with syncs in flight, several batches. */
#define MAX_PENDING (MAX_BATCH * (STOR_SYNC_THREADS + 2))
#define BIG_TEXT (300 * 1024) /* more than one text chunk */

enum rec_type { REC_INTENT = 1, REC_ACK = 2 };
enum op_type { OP_APPEND = 1, OP_STORE_ADD, OP_STORE_REMOVE, OP_EXPUNGE };

struct rec {
	uint8_t type;
	uint8_t op;
	uint32_t uid;      /* store/expunge; ack: intents acknowledged so far */
	uint32_t flags;    /* append/store */
	struct guid guid;  /* append */
};

struct mmsg {
	uint32_t uid;
	struct guid guid;
	uint32_t flags;
};

struct model {
	uint32_t uidnext;
	ARRAY(struct mmsg) msgs;     /* by increasing UID */
	ARRAY(struct mmsg) expunged; /* tombstones (flags unused) */
};

static const char *dir;
static struct guid mailbox_guid;

/* The text of a message is derived from its GUID, so the parent can check
 * the bytes. */
static size_t text_size(const struct guid *g)
{
	return g->b[0] % 16 == 0 ? BIG_TEXT : 4096 + g->b[1];
}

static void text_fill(const struct guid *g, unsigned char *p, size_t n)
{
	uint32_t x = (uint32_t)g->b[2] << 24 | (uint32_t)g->b[3] << 16 | g->b[4] << 8 | g->b[5];
	for (size_t i = 0; i < n; i++) {
		x = x * 1103515245u + 12345u;
		p[i] = (unsigned char)(x >> 16);
	}
}

static struct stor_db *open_store(void)
{
	struct stor_settings set;
	struct stor_db *db = NULL;
	char *err = NULL;
	memset(&set, 0, sizeof(set));
	set.dir = dir;
	/* Small journal segments, so that kills also land in segment
	 * switches, checkpoints, deletions and compaction. */
	set.journal_segment_size = 256 * 1024;
	if (stor_open(&set, &db, &err) < 0) {
		fprintf(stderr, "stor_open: %s\n", err);
		free(err);
		return NULL;
	}
	return db;
}

static void write_rec(int fd, const struct rec *r)
{
	/* One write of less than PIPE_BUF bytes: atomic. */
	if (write(fd, r, sizeof(*r)) != (ssize_t)sizeof(*r))
		_exit(3);
}

static int ack_fd;

static void report_ack(uint32_t count)
{
	struct rec ack;
	memset(&ack, 0, sizeof(ack));
	ack.type = REC_ACK;
	ack.uid = count;
	write_rec(ack_fd, &ack);
}

static void durable_ack(void *ctx, bool ok)
{
	if (!ok)
		_exit(2);
	report_ack((uint32_t)(uintptr_t)ctx);
}

/* Waits (bounded) for a sync in flight to end, and completes it. */
static void wait_sync(struct stor_db *db)
{
	struct pollfd p = { .fd = stor_sync_fd(db), .events = POLLIN };
	if (poll(&p, 1, 10000) != 1)
		_exit(2);
	stor_sync_finish(db);
}

static void child_main(int fd, unsigned seed, bool async)
{
	const char *error;
	struct stor_db *db = open_store();
	if (db == NULL)
		_exit(2);
	struct stor_mailbox mb;
	if (stor_mailbox_get_by_guid(db, &mailbox_guid, &mb, &error) != 1)
		_exit(2);
	uint32_t uidnext = mb.uidnext;
	stor_mailbox_free(&mb);
	srand(seed);
	unsigned char *text = xmalloc(BIG_TEXT);
	uint64_t deadline = clock_mono_ms() + 5000;
	uint32_t intents = 0;
	ack_fd = fd;
	if (async && stor_sync_fd(db) < 0)
		_exit(2);
	for (unsigned iter = 0; iter < 100000 && clock_mono_ms() < deadline; iter++) {
		int batch = 1 + rand() % MAX_BATCH;
		for (int i = 0; i < batch; i++) {
			struct rec r;
			memset(&r, 0, sizeof(r));
			r.type = REC_INTENT;
			int pick = rand() % 10;
			r.op = pick < 5 ? OP_APPEND : pick < 7 ? OP_STORE_ADD :
				pick < 9 ? OP_STORE_REMOVE : OP_EXPUNGE;
			uint32_t lo = uidnext > 20 ? uidnext - 20 : 1;
			r.uid = lo + (uint32_t)rand() % (uidnext - lo + 1);
			r.flags = (uint32_t)rand() & (STOR_FLAG_SEEN | STOR_FLAG_FLAGGED |
						      STOR_FLAG_DELETED);
			guid_generate(&r.guid);
			write_rec(fd, &r);
			intents++;
			int ret = 0;
			if (r.op == OP_APPEND) {
				struct stor_append a;
				size_t n = text_size(&r.guid);
				text_fill(&r.guid, text, n);
				memset(&a, 0, sizeof(a));
				a.guid = &r.guid;
				a.flags = r.flags;
				a.internaldate = 1700000000;
				a.text = text;
				a.text_len = n;
				ret = stor_msg_append(db, &mailbox_guid, &a, NULL, NULL, &error);
				uidnext++;
			} else if (r.op == OP_EXPUNGE) {
				ret = stor_msg_expunge(db, &mailbox_guid, &r.uid, 1, 0, NULL, &error);
			} else {
				struct stor_store s;
				memset(&s, 0, sizeof(s));
				s.op = r.op == OP_STORE_ADD ? STOR_FLAGS_ADD : STOR_FLAGS_REMOVE;
				s.flags = r.flags;
				ret = stor_msg_store(db, &mailbox_guid, &r.uid, 1, &s, NULL, NULL,
						     &error);
			}
			if (ret < 0) {
				fprintf(stderr, "child: %s\n", error);
				_exit(2);
			}
		}
		if (async) {
			stor_on_durable(db, durable_ack, (void *)(uintptr_t)intents);
			int started = stor_sync_start(db);
			for (int w = 0; started == 0 && stor_sync_busy(db) && w < 100; w++) {
				wait_sync(db);
				started = stor_sync_start(db);
			}
			if (started < 0)
				_exit(2);
			continue;
		}
		if (stor_sync(db, &error) < 0) {
			fprintf(stderr, "child: sync: %s\n", error);
			_exit(2);
		}
		report_ack(intents);
	}
	/* Ran out of time before the parent's kill: wait for it. */
	pause();
	_exit(0);
}

static struct mmsg *model_find(struct model *m, uint32_t uid)
{
	for (size_t i = 0; i < m->msgs.count; i++) {
		if (m->msgs.items[i].uid == uid)
			return &m->msgs.items[i];
	}
	return NULL;
}

static void model_apply(struct model *m, const struct rec *r)
{
	struct mmsg *msg;
	switch (r->op) {
	case OP_APPEND: {
		struct mmsg n = { m->uidnext++, r->guid, r->flags };
		ARRAY_PUSH(&m->msgs, n);
		break;
	}
	case OP_STORE_ADD:
		if ((msg = model_find(m, r->uid)) != NULL)
			msg->flags |= r->flags;
		break;
	case OP_STORE_REMOVE:
		if ((msg = model_find(m, r->uid)) != NULL)
			msg->flags &= ~r->flags;
		break;
	case OP_EXPUNGE:
		if ((msg = model_find(m, r->uid)) != NULL) {
			ARRAY_PUSH(&m->expunged, *msg);
			*msg = m->msgs.items[--m->msgs.count];
			/* Keep UID order. */
			for (size_t i = 1; i < m->msgs.count; i++) {
				for (size_t j = i; j > 0 && m->msgs.items[j - 1].uid >
					     m->msgs.items[j].uid; j--) {
					struct mmsg t = m->msgs.items[j];
					m->msgs.items[j] = m->msgs.items[j - 1];
					m->msgs.items[j - 1] = t;
				}
			}
		}
		break;
	}
}

static void model_copy(struct model *dst, const struct model *src)
{
	ARRAY_FREE(&dst->msgs);
	ARRAY_FREE(&dst->expunged);
	dst->uidnext = src->uidnext;
	for (size_t i = 0; i < src->msgs.count; i++)
		ARRAY_PUSH(&dst->msgs, src->msgs.items[i]);
	for (size_t i = 0; i < src->expunged.count; i++)
		ARRAY_PUSH(&dst->expunged, src->expunged.items[i]);
}

static void model_free(struct model *m)
{
	ARRAY_FREE(&m->msgs);
	ARRAY_FREE(&m->expunged);
}

static int tomb_uid_cmp(const void *a, const void *b)
{
	uint32_t x = ((const struct mmsg *)a)->uid, y = ((const struct mmsg *)b)->uid;
	return x < y ? -1 : x > y;
}

/* Whether the store's mailbox holds exactly the model's state. */
static bool store_matches(const struct model *m, const struct stor_mailbox *mb,
			  const stor_msg_list *msgs, const stor_tombstone_list *tombs)
{
	if (mb->uidnext != m->uidnext || msgs->count != m->msgs.count ||
	    tombs->count != m->expunged.count)
		return false;
	for (size_t i = 0; i < msgs->count; i++) {
		const struct stor_msg *s = &msgs->items[i];
		const struct mmsg *e = &m->msgs.items[i];
		if (s->uid != e->uid || guid_cmp(&s->guid, &e->guid) != 0 || s->flags != e->flags)
			return false;
	}
	struct mmsg *sorted = xmalloc(m->expunged.count * sizeof(struct mmsg) + 1);
	if (m->expunged.count > 0) {
		memcpy(sorted, m->expunged.items, m->expunged.count * sizeof(struct mmsg));
		qsort(sorted, m->expunged.count, sizeof(struct mmsg), tomb_uid_cmp);
	}
	bool ok = true;
	for (size_t i = 0; i < tombs->count && ok; i++) {
		ok = tombs->items[i].uid == sorted[i].uid &&
			guid_cmp(&tombs->items[i].guid, &sorted[i].guid) == 0;
	}
	free(sorted);
	return ok;
}

/* Checks the reopened store against the acknowledged model plus prefixes
 * of the pending operations; on success the model becomes the state
 * found. */
static void check_round(struct model *acked, const struct rec *pending, size_t npending,
			unsigned round, uint32_t *checked_below)
{
	const char *error = NULL;
	struct stor_db *db = open_store();
	CU_ASSERT_PTR_NOT_NULL_FATAL(db);
	struct stor_mailbox mb;
	stor_msg_list msgs, changed;
	stor_tombstone_list tombs;
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get_by_guid(db, &mailbox_guid, &mb, &error), 1);
	CU_ASSERT_EQUAL_FATAL(stor_msg_list_range(db, &mailbox_guid, 1, UINT32_MAX, &msgs, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_changes_since(db, &mailbox_guid, 0, &changed, &tombs, &error), 0);
	int ret = stor_mailbox_check(db, &mailbox_guid, &error);
	if (ret < 0)
		fprintf(stderr, "round %u: %s\n", round, error);
	CU_ASSERT_EQUAL(ret, 0);
	/* The journal's space accounting survived the kill too. */
	ret = stor_test_check_journal(db, &error);
	if (ret < 0)
		fprintf(stderr, "round %u: journal: %s\n", round, error);
	CU_ASSERT_EQUAL(ret, 0);

	struct model cand = { 0, ARRAY_INIT, ARRAY_INIT };
	model_copy(&cand, acked);
	bool matched = store_matches(&cand, &mb, &msgs, &tombs);
	for (size_t i = 0; i < npending && !matched; i++) {
		model_apply(&cand, &pending[i]);
		matched = store_matches(&cand, &mb, &msgs, &tombs);
	}
	if (!matched)
		fprintf(stderr, "round %u: store matches no acknowledged state "
			"(%zu messages, uidnext %u; acked %zu messages, uidnext %u, %zu pending)\n",
			round, msgs.count, mb.uidnext, acked->msgs.count, acked->uidnext, npending);
	CU_ASSERT_TRUE(matched);
	if (matched)
		model_copy(acked, &cand);
	model_free(&cand);

	/* Texts are there byte for byte: all new ones, and a sample of the
	 * older ones (their sizes are all checked by stor_mailbox_check). */
	struct buf text = BUF_INIT;
	unsigned char *expect = xmalloc(BIG_TEXT);
	for (size_t i = 0; i < msgs.count; i++) {
		const struct guid *g = &msgs.items[i].guid;
		if (msgs.items[i].uid < *checked_below && rand() % 64 != 0)
			continue;
		size_t n = text_size(g);
		buf_reset(&text);
		CU_ASSERT_EQUAL(stor_text_read(db, g, 0, n + 1, &text, &error), 0);
		text_fill(g, expect, n);
		CU_ASSERT(text.len == n && memcmp(text.data, expect, n) == 0);
	}
	free(expect);
	buf_free(&text);
	*checked_below = mb.uidnext;
	stor_msg_list_free(&msgs);
	stor_msg_list_free(&changed);
	ARRAY_FREE(&tombs);
	stor_mailbox_free(&mb);
	stor_close(&db);
}

static void test_kill_9_keeps_every_acknowledged_change(void)
{
	char *tmp = test_mkdtemp();
	dir = tmp;
	struct stor_db *db = open_store();
	CU_ASSERT_PTR_NOT_NULL_FATAL(db);
	struct stor_mailbox_create c;
	struct stor_mailbox mb;
	const char *error;
	memset(&c, 0, sizeof(c));
	c.user = "crash";
	c.name = "INBOX";
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_create(db, &c, &mb, &error), 0);
	mailbox_guid = mb.guid;
	stor_mailbox_free(&mb);
	CU_ASSERT_EQUAL_FATAL(stor_sync(db, &error), 0);
	stor_close(&db);

	struct model acked = { 1, ARRAY_INIT, ARRAY_INIT };
	/* STOR_CRASH_SEED=N replays the kill timing and operations of a run. */
	const char *env = getenv("STOR_CRASH_SEED");
	unsigned seed = env != NULL ? (unsigned)strtoul(env, NULL, 10) :
		(unsigned)time(NULL) ^ (unsigned)getpid();
	srand(seed);
	printf("\n  crash test seed %u (STOR_CRASH_SEED)\n", seed);
	unsigned total_acked = 0, total_pending = 0;
	uint32_t checked_below = 0;
	for (unsigned round = 0; round < ROUNDS; round++) {
		int fds[2];
		CU_ASSERT_EQUAL_FATAL(pipe(fds), 0);
		fflush(stdout);
		fflush(stderr);
		pid_t pid = fork();
		CU_ASSERT_FATAL(pid >= 0);
		if (pid == 0) {
			close(fds[0]);
			child_main(fds[1], seed + round * 7919, round % 2 == 1);
		}
		close(fds[1]);
		/* Let it run 20..170 ms; the first rounds also include the
		 * open, so some kills land early. */
		struct timespec ts = { 0, (long)(20 + rand() % 150) * 1000000L };
		nanosleep(&ts, NULL);
		kill(pid, SIGKILL);
		int status = 0;
		CU_ASSERT_EQUAL(waitpid(pid, &status, 0), pid);
		CU_ASSERT(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);

		/* Replay the reports: acknowledged operations go into the model,
		 * the rest stay pending. */
		struct rec pending[MAX_PENDING];
		size_t npending = 0;
		uint32_t seen = 0, done = 0; /* intents reported, acknowledged */
		struct rec r;
		ssize_t n;
		while ((n = read(fds[0], &r, sizeof(r))) == (ssize_t)sizeof(r)) {
			if (r.type == REC_INTENT) {
				CU_ASSERT_FATAL(npending < MAX_PENDING);
				pending[npending++] = r;
				seen++;
				continue;
			}
			/* Acknowledgements come in order and cover a prefix of
			 * the intents. */
			CU_ASSERT_FATAL(r.uid >= done && r.uid <= seen);
			size_t k = r.uid - done;
			for (size_t i = 0; i < k; i++)
				model_apply(&acked, &pending[i]);
			memmove(pending, pending + k, (npending - k) * sizeof(pending[0]));
			npending -= k;
			total_acked += (unsigned)k;
			done = r.uid;
		}
		CU_ASSERT_EQUAL(n, 0);
		close(fds[0]);
		total_pending += npending;
		check_round(&acked, pending, npending, round, &checked_below);
	}
	printf("  %u rounds, %u acknowledged operations, %u unacknowledged at kills, "
	       "%zu messages at the end\n", ROUNDS, total_acked, total_pending, acked.msgs.count);
	CU_ASSERT(total_acked > 0);
	model_free(&acked);
	test_rmtree(tmp);
	free(tmp);
}

int main(void)
{
	static const struct test_case cases[] = {
		{ "kill -9 keeps every acknowledged change and nothing half-applied",
		  test_kill_9_keeps_every_acknowledged_change },
		{ NULL, NULL },
	};
	static const struct test_suite suites[] = {
		{ "storage-crash", cases, NULL, NULL },
		{ NULL, NULL, NULL, NULL },
	};
	return test_run_suites("test-storage-crash", suites);
}
