/* The cluster simulator of the mailbox-master tests: see sim.h. */
#include "tests/mm/sim.h"

#include <CUnit/CUnit.h>
#include <stdio.h>
#include <string.h>

#include "lib/buf.h"

/* splitmix64: small, seeded, the same sequence everywhere */
uint64_t sim_rand(struct sim *s, uint64_t bound)
{
	uint64_t z = (s->rng += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	z ^= z >> 31;
	return bound == 0 ? z : z % bound;
}

static bool live(const struct sim *s, int a, int b)
{
	return s->wired[a][b] && s->alive[a] && s->alive[b];
}

static void queue_clear(struct sim_queue *q)
{
	q->q.count = 0;
	q->due.count = 0;
	q->pos = 0;
}

void sim_drain(struct sim *s, int i)
{
	struct mm_output o;

	if (!s->alive[i])
		return;
	while (mm_next_output(s->node[i], &o)) {
		if (o.kind == MM_OUT_SEND) {
			int p = (int)o.peer;
			CU_ASSERT_FATAL(p >= 1 && p <= s->n && p != i);
			/* A node only sends to peers it was told are up. */
			CU_ASSERT(s->believes[i][p]);
			if (live(s, i, p)) {
				ARRAY_PUSH(&s->q[i][p].q, o.msg);
				ARRAY_PUSH(&s->q[i][p].due, s->now + s->latency_ms);
			}
			continue;
		}
		switch (o.event.type) {
		case MM_EV_REQUEST_DONE: {
			struct sim_answer a = { o.event.req_id, o.event.sid, o.event.epoch, s->now };
			ARRAY_PUSH(&s->answers[i], a);
			break;
		}
		case MM_EV_MASTER_GAINED:
			s->gained[i]++;
			s->gains_total++;
			break;
		case MM_EV_MOVE_FAILED:
			s->move_failed[i]++;
			break;
		default:
			break;
		}
	}
}

static void components(struct sim *s, int comp[SIM_MAX + 1])
{
	for (int i = 1; i <= s->n; i++)
		comp[i] = 0;
	for (int i = 1; i <= s->n; i++) {
		if (!s->alive[i] || comp[i] != 0)
			continue;
		int stack[SIM_MAX + 1], top = 0;
		comp[i] = i;
		stack[top++] = i;
		while (top > 0) {
			int u = stack[--top];
			for (int v = 1; v <= s->n; v++) {
				if (comp[v] == 0 && live(s, u, v)) {
					comp[v] = i;
					stack[top++] = v;
				}
			}
		}
	}
}

bool sim_connected(struct sim *s, int i, int j)
{
	int comp[SIM_MAX + 1];
	components(s, comp);
	return s->alive[i] && s->alive[j] && comp[i] == comp[j];
}

static void check_invariant(struct sim *s)
{
	int comp[SIM_MAX + 1];

	components(s, comp);
	s->invariant_checks++;
	for (int k = 0; k < s->n_gkeys; k++) {
		for (int a = 1; a <= s->n; a++) {
			if (!s->alive[a] || !mm_is_master(s->node[a], s->gkeys[k]))
				continue;
			for (int b = a + 1; b <= s->n; b++) {
				if (!s->alive[b] || comp[a] != comp[b] ||
				    !mm_is_master(s->node[b], s->gkeys[k]))
					continue;
				uint32_t ra, rb;
				uint64_t ea, eb;
				bool sa, sb;
				mm_node_root(s->node[a], &ra, &ea, &sa);
				mm_node_root(s->node[b], &rb, &eb, &sb);
				if (ea == eb) {
					if (s->violations++ == 0)
						fprintf(stderr, "\nINVARIANT: %d and %d both master of %s at epoch %llu.%u (t=%llu)\n",
							a, b, s->gkeys[k],
							(unsigned long long)MM_EPOCH_COUNTER(ea),
							MM_EPOCH_ROOT(ea), (unsigned long long)s->now);
				}
			}
		}
	}
}

static void new_node(struct sim *s, int i)
{
	struct mm_settings set = s->set;
	set.sid = (uint32_t)i;
	s->node[i] = mm_node_create(&set, s->now);
	CU_ASSERT_PTR_NOT_NULL_FATAL(s->node[i]);
	s->alive[i] = true;
	sim_drain(s, i);
}

void sim_init(struct sim *s, int n, uint64_t seed, bool mesh,
	      const struct mm_settings *tmpl)
{
	memset(s, 0, sizeof(*s));
	CU_ASSERT_FATAL(n >= 1 && n <= SIM_MAX);
	s->n = n;
	s->rng = seed;
	s->now = 1000;
	s->next_tick = s->now + SIM_TICK_MS;
	if (tmpl != NULL)
		s->set = *tmpl;
	else
		mm_settings_default(&s->set, 1);
	for (int i = 1; i <= n; i++)
		new_node(s, i);
	if (mesh) {
		for (int a = 1; a <= n; a++) {
			for (int b = a + 1; b <= n; b++)
				sim_wire(s, a, b, true);
		}
	}
}

void sim_free(struct sim *s)
{
	for (int i = 1; i <= SIM_MAX; i++) {
		mm_node_destroy(&s->node[i]);
		ARRAY_FREE(&s->answers[i]);
		for (int j = 1; j <= SIM_MAX; j++) {
			ARRAY_FREE(&s->q[i][j].q);
			ARRAY_FREE(&s->q[i][j].due);
		}
	}
}

void sim_watch(struct sim *s, const char *gkey)
{
	CU_ASSERT_FATAL(s->n_gkeys < SIM_MAX_GKEYS);
	s->gkeys[s->n_gkeys++] = gkey;
}

static void tell_down(struct sim *s, int i, int p)
{
	if (!s->alive[i] || !s->believes[i][p])
		return;
	s->believes[i][p] = false;
	mm_link_down(s->node[i], (uint32_t)p, s->now);
	sim_drain(s, i);
}

/* A new connection: a side that still believed in the old one first
 * learns that it died. */
static void tell_up(struct sim *s, int i, int p)
{
	tell_down(s, i, p);
	s->believes[i][p] = true;
	mm_link_up(s->node[i], (uint32_t)p, s->now);
	sim_drain(s, i);
}

void sim_wire(struct sim *s, int a, int b, bool up)
{
	bool was = live(s, a, b);
	s->wired[a][b] = s->wired[b][a] = up;
	bool is = live(s, a, b);
	if (was == is)
		return;
	queue_clear(&s->q[a][b]);
	queue_clear(&s->q[b][a]);
	if (is) {
		tell_up(s, a, b);
		tell_up(s, b, a);
	} else {
		tell_down(s, a, b);
		tell_down(s, b, a);
	}
	check_invariant(s);
}

void sim_cut_late(struct sim *s, int a, int b)
{
	if (!live(s, a, b))
		return;
	s->wired[a][b] = s->wired[b][a] = false;
	queue_clear(&s->q[a][b]);
	queue_clear(&s->q[b][a]);
	tell_down(s, a, b);
	check_invariant(s);
}

static void crash(struct sim *s, int i, bool late)
{
	if (!s->alive[i])
		return;
	s->alive[i] = false;
	mm_node_destroy(&s->node[i]);
	for (int p = 1; p <= s->n; p++) {
		if (p == i)
			continue;
		s->believes[i][p] = false;
		queue_clear(&s->q[i][p]);
		queue_clear(&s->q[p][i]);
		if (!late)
			tell_down(s, p, i);
	}
	check_invariant(s);
}

void sim_crash(struct sim *s, int i)
{
	crash(s, i, false);
}

void sim_crash_late(struct sim *s, int i)
{
	crash(s, i, true);
}

void sim_restart(struct sim *s, int i)
{
	if (s->alive[i])
		return;
	new_node(s, i);
	for (int p = 1; p <= s->n; p++) {
		if (p != i && live(s, i, p)) {
			tell_up(s, i, p);
			tell_up(s, p, i);
		}
	}
	check_invariant(s);
}

static void tick_all(struct sim *s)
{
	/* Late failure detection: each stale belief ends with chance 1/4
	 * per tick (40 ms on average). */
	for (int i = 1; i <= s->n; i++) {
		for (int p = 1; p <= s->n; p++) {
			if (s->believes[i][p] && !live(s, i, p) && sim_rand(s, 4) == 0)
				tell_down(s, i, p);
		}
	}
	for (int i = 1; i <= s->n; i++) {
		if (s->alive[i]) {
			mm_tick(s->node[i], s->now);
			sim_drain(s, i);
		}
	}
	s->next_tick = s->now + SIM_TICK_MS;
	check_invariant(s);
}

static bool pending(const struct sim *s)
{
	for (int a = 1; a <= s->n; a++) {
		for (int b = 1; b <= s->n; b++) {
			if (s->q[a][b].pos < s->q[a][b].q.count)
				return true;
		}
	}
	return false;
}

bool sim_step(struct sim *s)
{
	int cand[SIM_MAX * SIM_MAX][2], nc = 0;

	for (int a = 1; a <= s->n; a++) {
		for (int b = 1; b <= s->n; b++) {
			const struct sim_queue *qq = &s->q[a][b];
			if (qq->pos < qq->q.count && qq->due.items[qq->pos] <= s->now) {
				cand[nc][0] = a;
				cand[nc][1] = b;
				nc++;
			}
		}
	}
	if (nc == 0)
		return false;
	int k = (int)sim_rand(s, (uint64_t)nc);
	int a = cand[k][0], b = cand[k][1];
	struct sim_queue *q = &s->q[a][b];
	struct mm_msg msg = q->q.items[q->pos++];
	if (q->pos == q->q.count)
		queue_clear(q);
	s->now++;
	s->steps++;
	/* Every message crosses the wire form, as on a real link. */
	struct buf w1 = BUF_INIT, w2 = BUF_INIT;
	struct mm_msg parsed;
	const char *error;
	mm_msg_write(&msg, &w1);
	CU_ASSERT(w1.len < MM_WIRE_MAX_LINE);
	CU_ASSERT_FATAL(mm_msg_parse((const char *)w1.data, w1.len, &parsed, &error) == 0);
	mm_msg_write(&parsed, &w2);
	CU_ASSERT(w1.len == w2.len && memcmp(w1.data, w2.data, w1.len) == 0);
	buf_free(&w1);
	buf_free(&w2);
	s->wire_msgs++;
	mm_receive(s->node[b], (uint32_t)a, &parsed, s->now);
	sim_drain(s, b);
	check_invariant(s);
	if (s->now >= s->next_tick)
		tick_all(s);
	return true;
}

/* The earliest time a queued message falls due, or UINT64_MAX. */
static uint64_t next_due(const struct sim *s)
{
	uint64_t t = UINT64_MAX;
	for (int a = 1; a <= s->n; a++) {
		for (int b = 1; b <= s->n; b++) {
			const struct sim_queue *q = &s->q[a][b];
			if (q->pos < q->q.count && q->due.items[q->pos] < t)
				t = q->due.items[q->pos];
		}
	}
	return t;
}

/* Nothing can be delivered now: the next tick or due message, whichever
 * comes first (never past end). */
static uint64_t idle_until(const struct sim *s, uint64_t end)
{
	uint64_t t = s->next_tick, d = next_due(s);
	if (d < t)
		t = d;
	return t < end ? t : end;
}

void sim_run(struct sim *s, uint64_t ms)
{
	uint64_t end = s->now + ms;
	while (s->now < end) {
		if (!sim_step(s)) {
			s->now = idle_until(s, end);
			if (s->now >= s->next_tick)
				tick_all(s);
		}
	}
}

int64_t sim_run_until(struct sim *s, bool (*pred)(struct sim *s, void *ctx),
		      void *ctx, uint64_t max_ms)
{
	uint64_t start = s->now, end = s->now + max_ms;
	while (s->now < end) {
		if (!pending(s) && pred(s, ctx))
			return (int64_t)(s->now - start);
		if (!sim_step(s)) {
			s->now = idle_until(s, UINT64_MAX);
			if (s->now >= s->next_tick)
				tick_all(s);
		}
	}
	return -1;
}

bool sim_roots_agreed(struct sim *s, void *ctx)
{
	int comp[SIM_MAX + 1];
	(void)ctx;
	components(s, comp);
	for (int i = 1; i <= s->n; i++) {
		if (!s->alive[i])
			continue;
		int lowest = 0;
		for (int j = 1; j <= s->n && lowest == 0; j++) {
			if (s->alive[j] && comp[j] == comp[i])
				lowest = j;
		}
		uint32_t root, r2;
		uint64_t epoch, e2;
		bool settled, s2;
		mm_node_root(s->node[i], &root, &epoch, &settled);
		mm_node_root(s->node[lowest], &r2, &e2, &s2);
		if (root != (uint32_t)lowest || !settled || epoch != e2 ||
		    !mm_node_serving(s->node[lowest]))
			return false;
	}
	return true;
}

const struct sim_answer *sim_answer(struct sim *s, int i, uint64_t req_id)
{
	for (size_t k = 0; k < s->answers[i].count; k++) {
		if (s->answers[i].items[k].req_id == req_id)
			return &s->answers[i].items[k];
	}
	return NULL;
}

struct ask_ctx {
	uint64_t req_id;
	bool nodes[SIM_MAX + 1];
};

static bool all_answered(struct sim *s, void *vctx)
{
	struct ask_ctx *ctx = vctx;
	for (int i = 1; i <= s->n; i++) {
		if (ctx->nodes[i] && s->alive[i] && sim_answer(s, i, ctx->req_id) == NULL)
			return false;
	}
	return true;
}

uint32_t sim_ask_all(struct sim *s, int from, const char *gkey, uint64_t max_ms)
{
	static uint64_t next_req = 1000000;
	struct ask_ctx ctx;

	memset(&ctx, 0, sizeof(ctx));
	ctx.req_id = next_req++;
	for (int i = 1; i <= s->n; i++) {
		if (!sim_connected(s, from, i))
			continue;
		ctx.nodes[i] = true;
		CU_ASSERT(mm_request_master(s->node[i], gkey, ctx.req_id, s->now) == 0);
		sim_drain(s, i);
	}
	if (sim_run_until(s, all_answered, &ctx, max_ms) < 0)
		return 0;
	uint32_t master = 0;
	for (int i = 1; i <= s->n; i++) {
		if (!ctx.nodes[i])
			continue;
		const struct sim_answer *a = sim_answer(s, i, ctx.req_id);
		if (a == NULL || !s->alive[i])
			return 0;
		if (master == 0)
			master = a->master;
		else if (a->master != master)
			return 0;
	}
	if (master == 0 || master > (uint32_t)s->n || !s->alive[master] ||
	    !mm_is_master(s->node[master], gkey))
		return 0;
	return master;
}

struct one_ctx {
	int node;
	uint64_t req_id;
};

static bool one_answered(struct sim *s, void *vctx)
{
	struct one_ctx *ctx = vctx;
	return !s->alive[ctx->node] || sim_answer(s, ctx->node, ctx->req_id) != NULL;
}

uint32_t sim_request(struct sim *s, int i, const char *gkey, uint64_t req_id,
		     uint64_t max_ms)
{
	struct one_ctx ctx = { i, req_id };

	CU_ASSERT(mm_request_master(s->node[i], gkey, req_id, s->now) == 0);
	sim_drain(s, i);
	if (sim_run_until(s, one_answered, &ctx, max_ms) < 0 || !s->alive[i])
		return 0;
	return sim_answer(s, i, req_id)->master;
}
