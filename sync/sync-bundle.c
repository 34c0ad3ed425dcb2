/* Change bundles (SPEC.md 11): export, verification and import.  See
 * sync-bundle.h for the design; the file format and the verifier's checks,
 * in their order, are the SPEC's.
 *
 * This file: keys and signatures, and the import.  Export, the state a
 * node remembers between bundles, verification and the body's loading
 * have files of their own (sync-bundle-*.c). */
#include "sync/sync-bundle.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <zlib.h>

#include "lib/clock.h"
#include "lib/log.h"
#include "lib/passwd.h"
#include "lib/str.h"
#include "lib/xalloc.h"
#include "sync/sync-bundle-private.h"

char *fmt_error(const char *fmt, ...)
{
	va_list ap;
	struct buf b = BUF_INIT;
	va_start(ap, fmt);
	buf_vappendf(&b, fmt, ap);
	va_end(ap);
	return (char *)buf_steal(&b, NULL);
}

/* ------------------------------------------------------------------ */
/* Keys, digest and signature */

static void hmac256(const unsigned char *key, size_t key_len, const void *msg, size_t len,
		    unsigned char out[32])
{
	unsigned int out_len = 32;
	if (HMAC(EVP_sha256(), key, (int)key_len, msg, len, out, &out_len) == NULL) {
		/* Only an OpenSSL malfunction; a zero MAC never verifies. */
		memset(out, 0, 32);
	}
}

/* The key that signs: the cluster secret, or the user key derived from it. */
void signing_key(const struct sync_bundle_key *key, bool user_key, const char *user,
		 unsigned char *out, size_t *len_r, const unsigned char **key_r)
{
	if (!user_key) {
		*key_r = key->secret;
		*len_r = key->secret_len;
		return;
	}
	struct buf msg = BUF_INIT;
	buf_append(&msg, "STARLING-USER-KEY-1", 19);
	buf_append_byte(&msg, 0);
	buf_append_str(&msg, user);
	hmac256(key->secret, key->secret_len, msg.data, msg.len, out);
	buf_free(&msg);
	*key_r = out;
	*len_r = 32;
}

void bundle_signature(const unsigned char *key, size_t key_len,
		      const unsigned char digest[32], unsigned char out[32])
{
	unsigned char msg[18 + 32];
	memcpy(msg, "STARLING-BUNDLE-1", 17);
	msg[17] = 0;
	memcpy(msg + 18, digest, 32);
	hmac256(key, key_len, msg, sizeof(msg), out);
}

/* ------------------------------------------------------------------ */
/* Import */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

static void rmtree(const char *path)
{
	nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

void sync_bundle_import_result_free(struct sync_bundle_import_result *res)
{
	free(res->user);
	res->user = NULL;
	buf_free(&res->state);
}

/* ADOPT lines: messages we hold after the merge exactly as the bundle had
 * them (see struct adopt); and the TEXT lines. */
static int adopts_write(struct stor_db *db, const struct loader *l, struct buf *texts,
			struct buf *out, char **error_r)
{
	const char *err;
	for (size_t i = 0; i < l->snaps.count; i++) {
		const struct ld_snap *sn = &l->snaps.items[i];
		stor_msg_list ours;
		if (sn->msgs.count == 0)
			continue;
		char mh[GUID_HEX_SIZE];
		guid_to_hex(&sn->mailbox, mh);
		for (size_t k = 0; k < sn->msgs.count; k++) {
			char th[GUID_HEX_SIZE];
			guid_to_hex(&sn->msgs.items[k].guid, th);
			buf_appendf(texts, "TEXT %s %u %s\n", mh, sn->msgs.items[k].uid, th);
		}
		if (stor_msg_list_range(db, &sn->mailbox, 1, UINT32_MAX, &ours, &err) < 0) {
			*error_r = fmt_error("%s", err);
			return -1;
		}
		size_t j = 0;
		for (size_t k = 0; k < sn->msgs.count; k++) {
			const struct stor_msg *b = &sn->msgs.items[k];
			while (j < ours.count && ours.items[j].uid < b->uid)
				j++;
			if (j == ours.count)
				break;
			const struct stor_msg *o = &ours.items[j];
			if (o->uid == b->uid && guid_cmp(&o->guid, &b->guid) == 0 &&
			    o->modseq >= b->modseq &&
			    sync_flags_equal(o->flags, &o->keywords, b->flags, &b->keywords))
				buf_appendf(out, "ADOPT %s %u %" PRIu64 " %" PRIu64 "\n", mh, b->uid,
					    b->modseq, o->modseq);
		}
		stor_msg_list_free(&ours);
	}
	return 0;
}

static void ld_snaps_free(struct loader *l)
{
	for (size_t i = 0; i < l->snaps.count; i++)
		stor_msg_list_free(&l->snaps.items[i].msgs);
	ARRAY_FREE(&l->snaps);
}

/* The merge runs a sync client (the node's store) against a sync server
 * (the scratch copy) joined by two buffers, a bounded number of rounds per
 * step.  A sync that fails is run again (at most MERGE_RUNS times in all),
 * as the sync engine itself does for a mailbox that does not converge:
 * what a run applied stays and the next run compares again.  One case needs
 * it today: a message we drop because the other copy holds it under another
 * UID has its text freed by the drop before the engine stores the other
 * copy, which then fails; the next run FETCHes the text from the scratch
 * copy. */
#define MERGE_RUNS 3
#define MERGE_ROUNDS_PER_STEP 4
#define LOAD_OCTETS_PER_STEP (1024 * 1024)

struct sync_bundle_import {
	struct stor_db *db, *scratch;
	uint32_t own_sid;
	sync_bundle_pseen_cb *pseen_apply;
	void *pseen_ctx;
	struct verified v;
	bool base_known;
	char *scratch_dir;
	struct loader l;
	struct inflater f;
	enum { IMP_LOAD, IMP_MERGE, IMP_DURABLE, IMP_DONE, IMP_FAILED } phase;
	/* IMP_DURABLE: the merge waits for the group commit (its callback
	 * outlives the import: it is only detached by destroy()). */
	struct imp_wait *wait;
	bool durable_done, durable_ok;
	sync_bundle_wake_cb *wake;
	void *wake_ctx;
	/* The merge. */
	struct buf to_server, to_client;
	struct sync_transport ct, st;
	struct sync_client *c;
	struct sync_server *s;
	unsigned run;
	struct sync_report report;
	struct sync_bundle_import_result res;
};

static void imp_to_server(void *ctx, const void *data, size_t len)
{
	struct sync_bundle_import *imp = ctx;
	buf_append(&imp->to_server, data, len);
}

static void imp_to_client(void *ctx, const void *data, size_t len)
{
	struct sync_bundle_import *imp = ctx;
	buf_append(&imp->to_client, data, len);
}

static void merge_end_run(struct sync_bundle_import *imp)
{
	sync_client_destroy(&imp->c);
	sync_server_destroy(&imp->s);
	buf_reset(&imp->to_server);
	buf_reset(&imp->to_client);
}

static void merge_start_run(struct sync_bundle_import *imp)
{
	struct sync_settings ss = {
		.peer_sid = SYNC_BUNDLE_PEER_BASE + imp->v.source,
		.user = imp->v.user,
		.full = true,
	};
	imp->c = sync_client_create(imp->db, &ss, &imp->ct);
	imp->s = sync_server_create(imp->scratch, imp->own_sid, &imp->st);
}

/* Hands what one end sent to the other (which may answer meanwhile, into
 * the other buffer). */
static int merge_deliver(struct sync_bundle_import *imp, bool to_server)
{
	struct buf *b = to_server ? &imp->to_server : &imp->to_client;
	if (b->len == 0)
		return 0;
	struct buf tmp = *b;
	buf_init(b);
	int r = to_server ? sync_server_feed(imp->s, tmp.data, tmp.len) :
			    sync_client_feed(imp->c, tmp.data, tmp.len);
	buf_free(&tmp);
	return r;
}

/* 1 more to do, 0 merged, -1 failed for good (*error_r). */
static int merge_step(struct sync_bundle_import *imp, char **error_r)
{
	const char *why = NULL;
	for (unsigned i = 0; i < MERGE_ROUNDS_PER_STEP && why == NULL; i++) {
		enum sync_step_result r = sync_client_step(imp->c);
		if (imp->run == 0)
			imp->report = *sync_client_report(imp->c);
		if (r == SYNC_STEP_DONE) {
			merge_end_run(imp);
			return 0;
		}
		if (r == SYNC_STEP_ERROR) {
			why = "";
			break;
		}
		bool moved = imp->to_server.len > 0 || imp->to_client.len > 0 ||
			     sync_server_busy(imp->s);
		if (merge_deliver(imp, true) < 0 ||
		    (sync_server_busy(imp->s) && sync_server_step(imp->s) < 0) ||
		    merge_deliver(imp, false) < 0)
			why = "";
		else if (r == SYNC_STEP_WAIT && !moved)
			why = "the sync did not finish";
	}
	if (why == NULL)
		return 1;
	const char *e = sync_client_error(imp->c);
	if (e == NULL)
		e = sync_server_error(imp->s);
	if (e == NULL)
		e = why[0] != '\0' ? why : "the sync failed";
	free(*error_r);
	*error_r = fmt_error("merging the bundle failed: %s", e);
	bool again = imp->run + 1 < MERGE_RUNS;
	log_warnx("bundle from %u for %s: %s%s", imp->v.source, imp->v.user, *error_r,
		  again ? "; running it again" : "");
	merge_end_run(imp);
	if (!again)
		return -1;
	free(*error_r);
	*error_r = NULL;
	imp->run++;
	merge_start_run(imp);
	return 1;
}

struct sync_bundle_import *sync_bundle_import_begin(struct stor_db *db,
						    const struct sync_bundle_import_settings *set,
						    const void *data, size_t len, char **error_r)
{
	struct verified v;
	*error_r = NULL;
	if (verify(db, set, data, len, &v, error_r) < 0)
		return NULL;

	/* The base check: a SINCE that names one of our exports made after
	 * our last import from this source means the source had merged
	 * everything we knew at that import, so the last common mailbox list
	 * the sync engine kept for it is still true. */
	bool base_known = false;
	if (!v.since_full) {
		uint64_t ctr;
		struct last_import li;
		int r1 = exports_find(db, v.user, v.since_hex, &ctr, error_r);
		int r2 = r1 < 0 ? -1 : last_import_get(db, v.source, v.user, &li, error_r);
		base_known = r1 > 0 && (r2 == 0 || ctr > li.counter);
		if (r2 >= 0)
			buf_free(&li.raw);
		if (r1 < 0 || r2 < 0)
			return NULL;
	}

	char *tmpl = xasprintf("%s/bundle-scratch.XXXXXX", set->scratch_parent);
	if (mkdtemp(tmpl) == NULL) {
		*error_r = fmt_error("cannot make a scratch directory in %s: %s",
				     set->scratch_parent, strerror(errno));
		free(tmpl);
		return NULL;
	}
	struct stor_settings sset = { .dir = tmpl, .max_message_size = set->max_message_size };
	struct stor_db *scratch = NULL;
	char *oerr = NULL;
	if (stor_open(&sset, &scratch, &oerr) < 0) {
		*error_r = fmt_error("cannot open a scratch store: %s", oerr);
		free(oerr);
		rmtree(tmpl);
		free(tmpl);
		return NULL;
	}

	struct sync_bundle_import *imp = xcalloc(1, sizeof(*imp));
	imp->db = db;
	imp->scratch = scratch;
	imp->own_sid = set->own_sid;
	imp->pseen_apply = set->pseen_apply;
	imp->pseen_ctx = set->pseen_ctx;
	imp->v = v;
	imp->base_known = base_known;
	imp->scratch_dir = tmpl;
	imp->l.db = db;
	imp->l.scratch = scratch;
	imp->l.v = &imp->v;
	imp->l.max_message_size = set->max_message_size != 0 ? set->max_message_size :
							       SYNC_BUNDLE_MAX_SIZE;
	struct proto_parser_settings ps;
	proto_parser_settings_default(&ps);
	imp->l.parser = proto_parser_create(&ps);
	imp->f.in = (const unsigned char *)data + v.header_len;
	imp->f.in_left = v.comp_len;
	imp->f.raw_len = v.raw_len;
	imp->phase = IMP_LOAD;
	buf_init(&imp->to_server);
	buf_init(&imp->to_client);
	imp->ct.send = imp_to_server;
	imp->ct.ctx = imp;
	imp->st.send = imp_to_client;
	imp->st.ctx = imp;
	buf_init(&imp->res.state);
	return imp;
}

static int imp_fail(struct sync_bundle_import *imp)
{
	imp->phase = IMP_FAILED;
	return -1;
}

struct imp_wait {
	struct sync_bundle_import *imp; /* NULL once the import is gone */
};

static void imp_durable(void *ctx, bool ok)
{
	struct imp_wait *w = ctx;
	struct sync_bundle_import *imp = w->imp;
	free(w);
	if (imp == NULL)
		return;
	imp->wait = NULL;
	imp->durable_done = true;
	imp->durable_ok = ok;
	if (imp->wake != NULL)
		imp->wake(imp->wake_ctx);
}

/* Records the import; the merge and the record then wait for the group
 * commit of the node (storage's helper thread), not for an fsync here. */
static int imp_record(struct sync_bundle_import *imp, char **error_r)
{
	const struct verified *v = &imp->v;
	/* The user's private \Seen records, in the same group commit as the
	 * merge when they are changed here. */
	if (bundle_pseen_apply(imp->db, &imp->l, imp->pseen_apply, imp->pseen_ctx,
			       &imp->res.pseen, error_r) < 0)
		return -1;
	if (last_import_set(imp->db, v->source, v->user, v->created, v->digest_hex, error_r) < 0)
		return -1;
	imp->wait = xcalloc(1, sizeof(*imp->wait));
	imp->wait->imp = imp;
	stor_on_durable(imp->db, imp_durable, imp->wait);
	return 0;
}

/* The merge is durable: makes the state file. */
static int imp_finish(struct sync_bundle_import *imp, char **error_r)
{
	const struct verified *v = &imp->v;
	if (!imp->durable_ok) {
		*error_r = fmt_error("storing the merge: %s", stor_last_error(imp->db));
		return -1;
	}
	struct buf adopts = BUF_INIT, texts = BUF_INIT, bases = BUF_INIT;
	int ret = adopts_write(imp->db, &imp->l, &texts, &adopts, error_r);
	if (ret == 0) {
		bundle_pseen_write_bases(imp->db, &imp->l, &bases);
		write_state(&imp->res.state, v->user, v->source, v->created, v->digest_hex, &texts,
			    &adopts, &bases);
		imp->res.user = xstrdup(v->user);
		imp->res.source = v->source;
		imp->res.base_known = imp->base_known;
		imp->res.report = imp->report;
	}
	buf_free(&adopts);
	buf_free(&texts);
	buf_free(&bases);
	return ret;
}

int sync_bundle_import_step(struct sync_bundle_import *imp, char **error_r)
{
	const char *err;
	*error_r = NULL;
	if (imp->phase == IMP_DONE)
		return 0;
	if (imp->phase == IMP_FAILED) {
		*error_r = xstrdup("the import failed already");
		return -1;
	}
	if (imp->phase == IMP_LOAD) {
		int r = ld_inflate_step(&imp->l, &imp->f, LOAD_OCTETS_PER_STEP);
		if (r < 0) {
			*error_r = imp->l.error != NULL ? imp->l.error : xstrdup("bundle refused");
			imp->l.error = NULL;
			return imp_fail(imp);
		}
		if (r > 0)
			return 1;
		inflater_free(&imp->f);
		proto_parser_destroy(&imp->l.parser);
		/* 10.  Everything checked: from here on the node's store
		 * changes. */
		if (!imp->base_known) {
			char *key = xasprintf("sync.list.%u.%s", SYNC_BUNDLE_PEER_BASE + imp->v.source,
					      imp->v.user);
			int mr = stor_meta_set(imp->db, key, "", 0, &err);
			free(key);
			if (mr < 0) {
				*error_r = fmt_error("%s", err);
				return imp_fail(imp);
			}
		}
		imp->phase = IMP_MERGE;
		merge_start_run(imp);
		return 1;
	}
	if (imp->phase == IMP_MERGE) {
		int r = merge_step(imp, error_r);
		if (r < 0)
			return imp_fail(imp);
		if (r > 0)
			return 1;
		if (imp_record(imp, error_r) < 0)
			return imp_fail(imp);
		imp->phase = IMP_DURABLE;
	}
	if (!imp->durable_done)
		return SYNC_BUNDLE_IMPORT_WAIT;
	if (imp_finish(imp, error_r) < 0)
		return imp_fail(imp);
	imp->phase = IMP_DONE;
	return 0;
}

void sync_bundle_import_set_wake(struct sync_bundle_import *imp, sync_bundle_wake_cb *cb,
				 void *ctx)
{
	imp->wake = cb;
	imp->wake_ctx = ctx;
}

void sync_bundle_import_take_result(struct sync_bundle_import *imp,
				    struct sync_bundle_import_result *res_r)
{
	*res_r = imp->res;
	memset(&imp->res, 0, sizeof(imp->res));
	buf_init(&imp->res.state);
}

void sync_bundle_import_destroy(struct sync_bundle_import **impp)
{
	struct sync_bundle_import *imp = *impp;
	if (imp == NULL)
		return;
	*impp = NULL;
	if (imp->wait != NULL)
		imp->wait->imp = NULL;
	merge_end_run(imp);
	buf_free(&imp->to_server);
	buf_free(&imp->to_client);
	inflater_free(&imp->f);
	proto_parser_destroy(&imp->l.parser);
	ld_pending_clear(&imp->l);
	ARRAY_FREE(&imp->l.ids);
	ARRAY_FREE(&imp->l.placeholders);
	ld_snaps_free(&imp->l);
	bundle_pseen_free(&imp->l);
	free(imp->l.error);
	sync_bundle_import_result_free(&imp->res);
	stor_close(&imp->scratch);
	rmtree(imp->scratch_dir);
	free(imp->scratch_dir);
	free(imp);
}

void sync_bundle_import_progress(const struct sync_bundle_import *imp, char *out, size_t size)
{
	if (imp->phase == IMP_LOAD) {
		snprintf(out, size, "loading: %.1f of %.1f MiB", imp->f.produced / 1048576.0,
			 imp->f.raw_len / 1048576.0);
		return;
	}
	/* merge_step() keeps the first run's counts (a run again after a
	 * failure finds what the first one did and would show less). */
	const struct sync_report *r = &imp->report;
	snprintf(out, size, "merging: %u mailboxes checked, %u messages added, %u flags changed%s",
		 r->mailboxes_checked, r->messages_received, r->flags_changed,
		 imp->phase == IMP_DONE ? " (done)" : "");
}

int sync_bundle_import(struct stor_db *db, const struct sync_bundle_import_settings *set,
		       const void *data, size_t len, struct sync_bundle_import_result *res_r,
		       char **error_r)
{
	memset(res_r, 0, sizeof(*res_r));
	buf_init(&res_r->state);
	struct sync_bundle_import *imp = sync_bundle_import_begin(db, set, data, len, error_r);
	if (imp == NULL)
		return -1;
	int r;
	const char *err;
	while ((r = sync_bundle_import_step(imp, error_r)) > 0) {
		/* No loop here: sync now (a failure reaches the step through
		 * the durable callback). */
		if (r == SYNC_BUNDLE_IMPORT_WAIT)
			(void)stor_sync(db, &err);
	}
	if (r == 0)
		sync_bundle_import_take_result(imp, res_r);
	sync_bundle_import_destroy(&imp);
	return r;
}
