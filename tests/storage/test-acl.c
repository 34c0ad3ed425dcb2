/* Unit tests of the RFC 4314 rights model (storage/acl-rights.c) and of
 * ACL records and the sharing index in the store (storage/storage-acl.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/config.h"
#include "lib/xalloc.h"
#include "storage/acl-rights.h"
#include "storage/storage-acl.h"
#include "storage/storage-private.h"
#include "tests/storage/tests.h"

static uint32_t parse_ok(const char *s)
{
	uint32_t r = 0xdead;
	const char *err = NULL;
	CU_ASSERT_EQUAL(acl_rights_parse(s, strlen(s), &r, &err), 0);
	return r;
}

static void test_rights_parse_and_format(void)
{
	char out[sizeof(ACL_LETTERS)];
	CU_ASSERT_EQUAL(parse_ok(""), 0);
	CU_ASSERT_EQUAL(parse_ok(ACL_LETTERS), ACL_ALL);
	/* Order and repeats do not matter; the output is canonical. */
	acl_rights_format(parse_ok("arll"), out);
	CU_ASSERT_STRING_EQUAL(out, "lra");
	/* RFC 4314 2.1.1: c is k and x, d is t and e. */
	CU_ASSERT_EQUAL(parse_ok("c"), ACL_CREATE | ACL_DELETE_MBOX);
	CU_ASSERT_EQUAL(parse_ok("d"), ACL_DELETE_MSG | ACL_EXPUNGE);
	acl_rights_format(parse_ok("lrcd"), out);
	CU_ASSERT_STRING_EQUAL(out, "lrkxte");
}

/* RFC 4314 2.1.1: IMAP responses carry c when k or x is set and d when t
 * or e is set, and neither when none of k x t e is; the stored form has
 * neither. */
static void test_rights_format_rfc2086(void)
{
	char out[ACL_RIGHTS_RFC2086_SIZE];
	acl_rights_format_rfc2086(ACL_ALL, out);
	CU_ASSERT_STRING_EQUAL(out, "lrswipkxteacd");
	acl_rights_format_rfc2086(ACL_LOOKUP | ACL_CREATE, out);
	CU_ASSERT_STRING_EQUAL(out, "lkc");
	acl_rights_format_rfc2086(ACL_DELETE_MBOX, out);
	CU_ASSERT_STRING_EQUAL(out, "xc");
	acl_rights_format_rfc2086(ACL_EXPUNGE, out);
	CU_ASSERT_STRING_EQUAL(out, "ed");
	acl_rights_format_rfc2086(ACL_DELETE_MSG | ACL_ADMIN, out);
	CU_ASSERT_STRING_EQUAL(out, "tad");
	acl_rights_format_rfc2086(ACL_ALL & ~(ACL_CREATE | ACL_DELETE_MBOX | ACL_DELETE_MSG |
					      ACL_EXPUNGE),
				  out);
	CU_ASSERT_STRING_EQUAL(out, "lrswipa");
	acl_rights_format_rfc2086(0, out);
	CU_ASSERT_STRING_EQUAL(out, "");
	/* A client that sends back what it got (RFC 4314 says it must
	 * ignore c and d, an RFC 2086 one may not) sets every member of a c or
	 * d it got: exactly the rights, plus the members of those two. */
	for (uint32_t r = 0; r <= ACL_ALL; r++) {
		uint32_t want = r;
		if (r & (ACL_CREATE | ACL_DELETE_MBOX))
			want |= ACL_CREATE | ACL_DELETE_MBOX;
		if (r & (ACL_DELETE_MSG | ACL_EXPUNGE))
			want |= ACL_DELETE_MSG | ACL_EXPUNGE;
		acl_rights_format_rfc2086(r, out);
		CU_ASSERT_EQUAL(parse_ok(out), want);
	}
	/* The plain form is unchanged. */
	char plain[sizeof(ACL_LETTERS)];
	acl_rights_format(ACL_ALL, plain);
	CU_ASSERT_STRING_EQUAL(plain, ACL_LETTERS);
}

static void test_hostile_rights_are_refused(void)
{
	static const char *bad[] = { "lrz", "L", "l r", "lr\t", "+", "lr*", "\xff" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		uint32_t r = 0x1234;
		const char *err = NULL;
		CU_ASSERT_EQUAL(acl_rights_parse(bad[i], strlen(bad[i]), &r, &err), -1);
		CU_ASSERT_PTR_NOT_NULL(err);
		CU_ASSERT_EQUAL(r, 0x1234); /* nothing half-parsed comes out */
	}
	const char *err = NULL;
	uint32_t r = 0;
	CU_ASSERT_EQUAL(acl_rights_parse("lrz", 3, &r, &err), -1);
	CU_ASSERT_PTR_NOT_NULL_FATAL(err);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "'z'"));
	char *lots = xmalloc(4096);
	memset(lots, 'l', 4096);
	CU_ASSERT_EQUAL(acl_rights_parse(lots, 4096, &r, &err), -1);
	free(lots);
}

static void test_mod_rights(void)
{
	enum acl_mod mod;
	uint32_t r;
	const char *err;
	CU_ASSERT_EQUAL(acl_mod_rights_parse("+w", 2, &mod, &r, &err), 0);
	CU_ASSERT_EQUAL(mod, ACL_MOD_ADD);
	CU_ASSERT_EQUAL(acl_mod_apply(mod, ACL_LOOKUP, r), ACL_LOOKUP | ACL_WRITE);
	CU_ASSERT_EQUAL(acl_mod_rights_parse("-l", 2, &mod, &r, &err), 0);
	CU_ASSERT_EQUAL(mod, ACL_MOD_REMOVE);
	CU_ASSERT_EQUAL(acl_mod_apply(mod, ACL_LOOKUP | ACL_READ, r), ACL_READ);
	CU_ASSERT_EQUAL(acl_mod_rights_parse("lr", 2, &mod, &r, &err), 0);
	CU_ASSERT_EQUAL(mod, ACL_MOD_REPLACE);
	CU_ASSERT_EQUAL(acl_mod_apply(mod, ACL_ALL, r), ACL_LOOKUP | ACL_READ);
	CU_ASSERT_EQUAL(acl_mod_rights_parse("+-l", 3, &mod, &r, &err), -1);
}

static void test_identifiers(void)
{
	const char *err;
	CU_ASSERT_TRUE(acl_identifier_valid("anyone", 6, &err));
	CU_ASSERT_TRUE(acl_identifier_valid("-bob@example.org", 16, &err));
	CU_ASSERT_FALSE(acl_identifier_valid("", 0, &err));
	CU_ASSERT_FALSE(acl_identifier_valid("-", 1, &err));
	CU_ASSERT_FALSE(acl_identifier_valid("bob smith", 9, &err));
	CU_ASSERT_FALSE(acl_identifier_valid(".hidden", 7, &err));
	CU_ASSERT_FALSE(acl_identifier_valid("a\0b", 3, &err));
	char id[ACL_IDENTIFIER_MAX + 2];
	memset(id, 'x', sizeof(id));
	CU_ASSERT_TRUE(acl_identifier_valid(id, ACL_IDENTIFIER_MAX, &err));
	CU_ASSERT_FALSE(acl_identifier_valid(id, ACL_IDENTIFIER_MAX + 1, &err));
	/* Owners: user names and the public owner, which no identifier (and
	 * so no login) can be. */
	CU_ASSERT_TRUE(acl_owner_valid("alice"));
	CU_ASSERT_TRUE(acl_owner_valid(ACL_PUBLIC_OWNER));
	CU_ASSERT_FALSE(acl_identifier_valid(ACL_PUBLIC_OWNER, strlen(ACL_PUBLIC_OWNER), &err));
	CU_ASSERT_FALSE(acl_owner_valid("-alice"));
	CU_ASSERT_FALSE(acl_owner_valid(".private"));
	CU_ASSERT_FALSE(acl_owner_valid(""));
	/* Nobody is the public owner: only records give rights. */
	struct acl_entry pub[] = { { "anyone", ACL_LOOKUP | ACL_READ } };
	CU_ASSERT_EQUAL(acl_evaluate(ACL_PUBLIC_OWNER, "bob", ACL_ALL, pub, 1, NULL), ACL_LOOKUP | ACL_READ);
	CU_ASSERT_EQUAL(acl_evaluate(ACL_PUBLIC_OWNER, "bob", ACL_ALL, NULL, 0, NULL), 0);
}

static void test_evaluate(void)
{
	struct acl_entry acl[] = {
		{ "anyone", ACL_LOOKUP },
		{ "authenticated", ACL_READ },
		{ "bob", ACL_WRITE | ACL_INSERT | ACL_SEEN },
		{ "-bob", ACL_INSERT },
		{ "carol", ACL_ALL },
	};
	size_t n = sizeof(acl) / sizeof(acl[0]);
	CU_ASSERT_EQUAL(acl_evaluate("alice", "bob", ACL_ALL, acl, n, NULL),
			ACL_LOOKUP | ACL_READ | ACL_WRITE | ACL_SEEN);
	CU_ASSERT_EQUAL(acl_evaluate("alice", "dave", ACL_ALL, acl, n, NULL), ACL_LOOKUP | ACL_READ);
	CU_ASSERT_EQUAL(acl_evaluate("alice", "carol", ACL_ALL, acl, n, NULL), ACL_ALL);
	/* The owner has everything while no record names the owner. */
	CU_ASSERT_EQUAL(acl_evaluate("alice", "alice", ACL_ALL, acl, n, NULL), ACL_ALL);
	struct acl_entry own[] = { { "alice", ACL_READ }, { "-anyone", ACL_READ } };
	CU_ASSERT_EQUAL(acl_evaluate("alice", "alice", ACL_ALL, own, 2, NULL), ACL_OWNER_ALWAYS);
	/* A negative "anyone" takes from everyone. */
	struct acl_entry neg[] = { { "bob", ACL_ALL }, { "-anyone", ACL_ADMIN } };
	CU_ASSERT_EQUAL(acl_evaluate("alice", "bob", ACL_ALL, neg, 2, NULL), ACL_ALL & ~ACL_ADMIN);
	CU_ASSERT_EQUAL(acl_evaluate("alice", "bob", ACL_ALL, NULL, 0, NULL), 0);
	struct buf why = BUF_INIT;
	acl_evaluate("alice", "bob", ACL_ALL, acl, n, &why);
	buf_append_str(&why, "");
	CU_ASSERT_PTR_NOT_NULL(strstr((const char *)why.data, "denied by \"-bob\" i"));
	CU_ASSERT_PTR_NOT_NULL(strstr((const char *)why.data, "result: \"lrsw\""));
	buf_free(&why);
}

/* acl_owner_rights: the owner's rights while no record names the owner,
 * "l" and "a" always added; a record naming the owner still wins. */
static void test_owner_default(void)
{
	static const struct {
		const char *value;
		uint32_t rights;
	} cases[] = {
		{ NULL, ACL_ALL },
		{ "lrswipkte", ACL_ALL & ~ACL_DELETE_MBOX },
		/* The obsolete letters as RFC 4314 2.1.1 maps them. */
		{ "rc", ACL_OWNER_ALWAYS | ACL_READ | ACL_CREATE | ACL_DELETE_MBOX },
		{ "rd", ACL_OWNER_ALWAYS | ACL_READ | ACL_DELETE_MSG | ACL_EXPUNGE },
		/* Without "l" and "a" an owner could never repair their ACL. */
		{ "r", ACL_OWNER_ALWAYS | ACL_READ },
	};
	const char *why;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		uint32_t def = 0;
		CU_ASSERT_EQUAL(acl_owner_rights_parse(cases[i].value, &def, &why), 0);
		CU_ASSERT_EQUAL(def, cases[i].rights);
		if (def != cases[i].rights)
			fprintf(stderr, "\nacl_owner_rights = %s: %#x\n",
				cases[i].value != NULL ? cases[i].value : "(unset)", def);
	}
	uint32_t kept = 12345;
	CU_ASSERT_EQUAL(acl_owner_rights_parse("lrq", &kept, &why), -1);
	CU_ASSERT_STRING_EQUAL(why, "unknown right 'q'");
	CU_ASSERT_EQUAL(kept, 12345);
	CU_ASSERT_EQUAL(acl_owner_rights_parse("LR", &kept, &why), -1);
	/* As a config value: one line naming the file and the line. */
	char *err = NULL;
	struct config *cfg = config_parse("t.conf", "node_id = 7\ndata_dir = d\nacl_owner_rights = lrq\n", &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
	CU_ASSERT_EQUAL(acl_owner_rights_config(cfg, &kept, &err), -1);
	CU_ASSERT_STRING_EQUAL(err, "t.conf:3: acl_owner_rights: unknown right 'q'");
	free(err);
	config_free(&cfg);
	cfg = config_parse("t.conf", "node_id = 7\ndata_dir = d\n", &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
	CU_ASSERT_EQUAL(acl_owner_rights_config(cfg, &kept, &err), 0);
	CU_ASSERT_EQUAL(kept, ACL_ALL);
	config_free(&cfg);

	uint32_t nox = ACL_ALL & ~ACL_DELETE_MBOX;
	struct acl_entry others[] = { { "bob", ACL_ALL }, { "anyone", ACL_DELETE_MBOX } };
	CU_ASSERT_EQUAL(acl_evaluate("alice", "alice", nox, others, 2, NULL), nox);
	CU_ASSERT_EQUAL(acl_evaluate("alice", "bob", nox, others, 2, NULL), ACL_ALL);
	struct acl_entry own[] = { { "alice", ACL_ALL } };
	CU_ASSERT_EQUAL(acl_evaluate("alice", "alice", nox, own, 1, NULL), ACL_ALL);
	struct acl_entry own_neg[] = { { "-alice", ACL_READ } };
	CU_ASSERT_EQUAL(acl_evaluate("alice", "alice", nox, own_neg, 1, NULL), ACL_OWNER_ALWAYS);
	/* Nobody owns public mailboxes: the default gives nothing there. */
	CU_ASSERT_EQUAL(acl_evaluate(ACL_PUBLIC_OWNER, "alice", nox, NULL, 0, NULL), 0);
	struct buf why_b = BUF_INIT;
	acl_evaluate("alice", "alice", nox | ACL_OWNER_ALWAYS, NULL, 0, &why_b);
	buf_append_str(&why_b, "");
	CU_ASSERT_PTR_NOT_NULL(strstr((const char *)why_b.data, "owner: \"lrswipktea\", the owner's default"));
	CU_ASSERT_PTR_NOT_NULL(strstr((const char *)why_b.data, "result: \"lrswipktea\""));
	buf_free(&why_b);
}

static char *held(struct stor_db *db, const struct guid *mb, const char *id)
{
	stor_acl_list list;
	const char *err;
	CU_ASSERT_EQUAL_FATAL(stor_acl_get(db, mb, &list, &err), 0);
	char *r = xstrdup("none");
	for (size_t i = 0; i < list.count; i++) {
		if (strcmp(list.items[i].identifier, id) == 0) {
			free(r);
			r = xstrdup(list.items[i].rights);
		}
	}
	stor_acl_list_free(&list);
	return r;
}

static size_t shares(struct stor_db *db, const char *grantee)
{
	stor_share_list list = ARRAY_INIT;
	const char *err;
	CU_ASSERT_EQUAL(stor_acl_shared_with(db, grantee, &list, &err), 0);
	size_t n = list.count;
	stor_share_list_free(&list);
	return n;
}

#define CHECK_HELD(db, mb, id, want) do { \
	char *h_ = held(db, mb, id); \
	CU_ASSERT_STRING_EQUAL(h_, want); \
	free(h_); \
} while (0)

static void test_store_merge_and_index(void)
{
	struct tstore t;
	tstore_open(&t);
	struct guid mb = tmailbox(t.db, "alice", "Team");
	const char *err;
	bool applied;
	CU_ASSERT_EQUAL(stor_acl_put(t.db, "alice", &mb, "bob", "rl", 100, &applied, &err), 0);
	CU_ASSERT_TRUE(applied);
	CHECK_HELD(t.db, &mb, "bob", "lr");
	CU_ASSERT_EQUAL(shares(t.db, "bob"), 1);
	/* An older record is kept out, in any order. */
	CU_ASSERT_EQUAL(stor_acl_put(t.db, "alice", &mb, "bob", "lrswi", 99, &applied, &err), 0);
	CU_ASSERT_FALSE(applied);
	CHECK_HELD(t.db, &mb, "bob", "lr");
	/* Equal times: the greater rights string wins on every node. */
	CU_ASSERT_EQUAL(stor_acl_put(t.db, "alice", &mb, "bob", "lrs", 100, &applied, &err), 0);
	CU_ASSERT_TRUE(applied);
	CU_ASSERT_EQUAL(stor_acl_put(t.db, "alice", &mb, "bob", "lr", 100, &applied, &err), 0);
	CU_ASSERT_FALSE(applied);
	CHECK_HELD(t.db, &mb, "bob", "lrs");
	/* Deleting leaves a tombstone and takes the index entry away. */
	CU_ASSERT_EQUAL(stor_acl_put(t.db, "alice", &mb, "bob", "", 200, &applied, &err), 0);
	CHECK_HELD(t.db, &mb, "bob", "");
	CU_ASSERT_EQUAL(shares(t.db, "bob"), 0);
	CU_ASSERT_EQUAL(stor_acl_put(t.db, "alice", &mb, "bob", "lr", 150, &applied, &err), 0);
	CU_ASSERT_FALSE(applied);
	/* Negative identifiers are not in the index. */
	CU_ASSERT_EQUAL(stor_acl_put(t.db, "alice", &mb, "-carol", "r", 1, &applied, &err), 0);
	CU_ASSERT_EQUAL(shares(t.db, "carol"), 0);
	CU_ASSERT_EQUAL(shares(t.db, "-carol"), 0);
	CU_ASSERT_EQUAL(stor_acl_put(t.db, "alice", &mb, "anyone", "l", 1, &applied, &err), 0);
	CU_ASSERT_EQUAL(shares(t.db, "anyone"), 1);
	int64_t next;
	CU_ASSERT_EQUAL(stor_acl_next_time(t.db, &mb, "bob", &next, &err), 0);
	CU_ASSERT(next > 200);
	/* Survives a reopen; deleting the mailbox takes records and index. */
	tstore_reopen(&t);
	CHECK_HELD(t.db, &mb, "anyone", "l");
	CU_ASSERT_EQUAL(stor_mailbox_delete(t.db, &mb, &err), 0);
	CHECK_HELD(t.db, &mb, "anyone", "none");
	CU_ASSERT_EQUAL(shares(t.db, "anyone"), 0);
	/* A late record for the deleted mailbox is dropped. */
	CU_ASSERT_EQUAL(stor_acl_put(t.db, "alice", &mb, "bob", "lr", 999, &applied, &err), 0);
	CU_ASSERT_FALSE(applied);
	CU_ASSERT_EQUAL(shares(t.db, "bob"), 0);
	tstore_close(&t);
}

static void test_store_refuses_bad_records(void)
{
	struct tstore t;
	tstore_open(&t);
	struct guid mb = tmailbox(t.db, "alice", "Team");
	const char *err;
	bool applied = true;
	CU_ASSERT_EQUAL(stor_acl_put(t.db, "alice", &mb, "bob", "lrQ", 1, &applied, &err), -1);
	CU_ASSERT_FALSE(applied);
	CU_ASSERT_EQUAL(stor_acl_put(t.db, "alice", &mb, "bo b", "lr", 1, &applied, &err), -1);
	CU_ASSERT_EQUAL(stor_acl_put(t.db, "alice", &mb, "", "lr", 1, &applied, &err), -1);
	CU_ASSERT_EQUAL(stor_acl_put(t.db, "", &mb, "bob", "lr", 1, &applied, &err), -1);
	/* A record naming another owner than the mailbox's is refused, also
	 * when no record is held yet (it would give rights on alice's
	 * mailbox that alice never gave). */
	CU_ASSERT_EQUAL(stor_acl_put(t.db, "mallory", &mb, "eve", "lra", 1, &applied, &err), -1);
	CU_ASSERT_EQUAL(shares(t.db, "eve"), 0);
	/* The same mailbox GUID cannot change owner through an ACL record. */
	CU_ASSERT_EQUAL(stor_acl_put(t.db, "alice", &mb, "bob", "lr", 1, &applied, &err), 0);
	CU_ASSERT_EQUAL(stor_acl_put(t.db, "mallory", &mb, "bob", "lra", 2, &applied, &err), -1);
	CHECK_HELD(t.db, &mb, "bob", "lr");
	stor_acl_list list;
	CU_ASSERT_EQUAL(stor_acl_get(t.db, &mb, &list, &err), 0);
	CU_ASSERT_EQUAL(list.count, 1);
	stor_acl_list_free(&list);
	tstore_close(&t);
}


/* The sharing index and the GUID tombstones must not share a key space: a
 * mailbox whose GUID starts with "a\0" and holds a GUID tombstone made
 * LIST of shared/ fail for user "a". */
static void test_index_apart_from_guid_tombs(void)
{
	struct tstore t;
	tstore_open(&t);
	struct guid mb;
	memset(&mb, 0x11, sizeof(mb));
	mb.b[0] = 'a';
	mb.b[1] = '\0';
	const char *err;
	struct stor_mailbox_create req = { .user = "alice", .name = "X", .guid = &mb };
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_create(t.db, &req, NULL, &err), 0);
	struct guid gone;
	memset(&gone, 0x22, sizeof(gone));
	size_t added = 0;
	CU_ASSERT_EQUAL(stor_guid_tombs_add(t.db, &mb, &gone, 1, 5, &added, &err), 0);
	CU_ASSERT_EQUAL(added, 1);
	stor_share_list list = ARRAY_INIT;
	CU_ASSERT_EQUAL(stor_acl_shared_with(t.db, "a", &list, &err), 0);
	CU_ASSERT_EQUAL(list.count, 0);
	stor_share_list_free(&list);
	tstore_close(&t);
}

/* A store whose index an older version kept under 'K' gets it moved on
 * open, and the old entries deleted. */
static void test_index_moved_on_open(void)
{
	struct tstore t;
	tstore_open(&t);
	struct guid mb = tmailbox(t.db, "alice", "Team");
	const char *err;
	CU_ASSERT_EQUAL(stor_acl_put(t.db, "alice", &mb, "bob", "lr", 1, NULL, &err), 0);
	/* Make it look like the older version's store. */
	struct stor_key now, old, meta;
	stor_key_init(&now, 'J');
	stor_key_init(&old, 'K');
	struct stor_key *both[] = { &now, &old };
	for (size_t i = 0; i < 2; i++) {
		stor_key_bytes(both[i], "bob", 4);
		stor_key_bytes(both[i], "alice", 6);
		stor_key_guid(both[i], &mb);
	}
	stor_key_init(&meta, 'M');
	stor_key_bytes(&meta, "acl.share_index", 15);
	struct stor_batch *wb = stor_batch_new();
	stor_batch_del(wb, &now);
	stor_batch_del(wb, &meta);
	stor_batch_put(wb, &old, "", 0);
	/* An undecodable record elsewhere is skipped: the store still opens. */
	struct stor_key bad;
	struct guid other;
	memset(&other, 0x33, sizeof(other));
	stor_key_init(&bad, 'E');
	stor_key_guid(&bad, &other);
	stor_key_bytes(&bad, "carol", 5);
	stor_batch_put(wb, &bad, "x", 1);
	CU_ASSERT_EQUAL(stor_db_write(t.db, wb, &err), 0);
	stor_batch_free(wb);
	CU_ASSERT_EQUAL(shares(t.db, "bob"), 0);
	tstore_reopen(&t);
	CU_ASSERT_EQUAL(shares(t.db, "bob"), 1);
	char *v = NULL;
	size_t vlen;
	CU_ASSERT_EQUAL(stor_db_get(t.db, &old, &v, &vlen, &err), 0);
	free(v);
	tstore_close(&t);
}

const struct test_case storage_acl_cases[] = {
	{ "rights parse and format (c and d mapped)", test_rights_parse_and_format },
	{ "rights in IMAP responses carry virtual c and d", test_rights_format_rfc2086 },
	{ "hostile rights strings are refused whole", test_hostile_rights_are_refused },
	{ "SETACL mod-rights", test_mod_rights },
	{ "identifiers", test_identifiers },
	{ "evaluation: union, negatives, owner", test_evaluate },
	{ "the owner's default rights (acl_owner_rights)", test_owner_default },
	{ "store: later record wins, index follows", test_store_merge_and_index },
	{ "store: bad records refused", test_store_refuses_bad_records },
	{ "sharing index apart from GUID tombstones", test_index_apart_from_guid_tombs },
	{ "an older store's sharing index is moved on open", test_index_moved_on_open },
	{ NULL, NULL },
};
