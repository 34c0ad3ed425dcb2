/* Derived data of message texts (imap/imap-derived.c over
 * storage/storage-derived.c): the record answers what parsing the text
 * answers, is bounded, is rebuilt when of another format or text, is
 * shared by copies (one text GUID) and goes when the text goes. */
#include <stdlib.h>
#include <string.h>

#include "imap/imap-derived.h"
#include "imap/imap-mime.h"
#include "imap/imap-sortkeys.h"
#include "imap/imap-thread.h"
#include "lib/xalloc.h"
#include "tests/imap/tests-imap.h"

static const char msg1[] =
	"Date: Tue, 2 Jan 2024 10:00:00 +0100\r\n"
	"From: \"Ann Example\" <ann@example.org>\r\n"
	"To: bob@example.net, carl@example.net\r\n"
	"Cc: =?utf-8?q?D=C3=A9nise?= <denise@example.com>\r\n"
	"Subject: Re: [list] Fwd: Lunch (fwd)\r\n"
	"Message-ID: <m1@example.org>\r\n"
	"References: <r0@example.org> <r1@example.org>\r\n"
	"In-Reply-To: <r1@example.org>\r\n"
	"MIME-Version: 1.0\r\n"
	"Content-Type: multipart/mixed; boundary=\"b1\"\r\n"
	"\r\n"
	"--b1\r\n"
	"Content-Type: text/plain; charset=utf-8\r\n"
	"\r\n"
	"hello\r\n"
	"--b1\r\n"
	"Content-Type: application/pdf; name=\"a.pdf\"\r\n"
	"Content-Transfer-Encoding: base64\r\n"
	"\r\n"
	"JVBERi0=\r\n"
	"--b1--\r\n";

struct fixture {
	char *dir;
	struct stor_db *db;
	struct guid mb, other;
};

static void setup(struct fixture *f)
{
	memset(f, 0, sizeof(*f));
	f->dir = test_mkdtemp();
	struct stor_settings set = { .dir = f->dir };
	char *err = NULL;
	CU_ASSERT_EQUAL_FATAL(stor_open(&set, &f->db, &err), 0);
	struct stor_mailbox_create req = { .user = "alice", .name = "INBOX" };
	struct stor_mailbox mb;
	const char *e;
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_create(f->db, &req, &mb, &e), 0);
	f->mb = mb.guid;
	stor_mailbox_free(&mb);
	req.name = "Other";
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_create(f->db, &req, &mb, &e), 0);
	f->other = mb.guid;
	stor_mailbox_free(&mb);
}

static void teardown(struct fixture *f)
{
	stor_close(&f->db);
	test_rmtree(f->dir);
	free(f->dir);
}

static uint32_t append(struct fixture *f, const char *text, size_t len, struct guid *guid_r)
{
	struct stor_append req;
	memset(&req, 0, sizeof(req));
	req.internaldate = 1700000000;
	req.text = text;
	req.text_len = len;
	uint32_t uid = 0;
	const char *e;
	CU_ASSERT_EQUAL_FATAL(stor_msg_append(f->db, &f->mb, &req, &uid, NULL, &e), 0);
	struct stor_msg m;
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(f->db, &f->mb, uid, &m, &e), 1);
	*guid_r = m.guid;
	stor_msg_free(&m);
	return uid;
}

static bool same(const void *a, size_t alen, const void *b, size_t blen)
{
	return alen == blen && (alen == 0 || memcmp(a, b, alen) == 0);
}

/* What the record holds equals what the parsed text answers. */
static void check_against_text(const char *text, size_t len)
{
	struct buf rec = BUF_INIT;
	imap_derived_build((const unsigned char *)text, len, &rec);
	struct imap_derived d;
	CU_ASSERT_EQUAL_FATAL(imap_derived_decode(rec.data, rec.len, len, &d), 0);
	struct imap_mime *m = imap_mime_parse((const unsigned char *)text, len);
	struct buf env = BUF_INIT, body = BUF_INIT, bs = BUF_INIT, hdr = BUF_INIT;
	imap_mime_envelope(m, &env);
	imap_mime_bodystructure(m, false, &body);
	imap_mime_bodystructure(m, true, &bs);
	CU_ASSERT_EQUAL(imap_mime_section(m, "", IMAP_SECTION_HEADER, NULL, 0, &hdr), 0);
	CU_ASSERT_EQUAL(d.have & (IMAP_DERIVED_ENVELOPE | IMAP_DERIVED_BODY |
				  IMAP_DERIVED_BODYSTRUCTURE | IMAP_DERIVED_HEADER | IMAP_DERIVED_THREAD),
			IMAP_DERIVED_ENVELOPE | IMAP_DERIVED_BODY | IMAP_DERIVED_BODYSTRUCTURE |
			IMAP_DERIVED_HEADER | IMAP_DERIVED_THREAD);
	CU_ASSERT(same(d.envelope, d.envelope_len, env.data, env.len));
	CU_ASSERT(same(d.body, d.body_len, body.data, body.len));
	CU_ASSERT(same(d.bodystructure, d.bodystructure_len, bs.data, bs.len));
	CU_ASSERT(same(d.header, d.header_len, hdr.data, hdr.len));

	/* HEADER.FIELDS of the header block alone = of the whole text */
	static const char *const fields[] = { "From", "subject", "X-None", "Content-Type" };
	struct imap_mime *hm = imap_mime_parse(d.header, d.header_len);
	struct buf a = BUF_INIT, b = BUF_INIT;
	CU_ASSERT_EQUAL(imap_mime_section(m, "", IMAP_SECTION_HEADER_FIELDS, fields, 4, &a), 0);
	CU_ASSERT_EQUAL(imap_mime_section(hm, "", IMAP_SECTION_HEADER_FIELDS, fields, 4, &b), 0);
	CU_ASSERT(same(a.data, a.len, b.data, b.len));
	buf_reset(&a);
	buf_reset(&b);
	CU_ASSERT_EQUAL(imap_mime_section(m, "", IMAP_SECTION_HEADER_FIELDS_NOT, fields, 4, &a), 0);
	CU_ASSERT_EQUAL(imap_mime_section(hm, "", IMAP_SECTION_HEADER_FIELDS_NOT, fields, 4, &b), 0);
	CU_ASSERT(same(a.data, a.len, b.data, b.len));
	imap_mime_free(&hm);

	/* sort keys */
	char *k = imap_sortkey_subject(m);
	CU_ASSERT_STRING_EQUAL(d.sortkey[IMAP_SORT_SUBJECT], k);
	free(k);
	static const struct { enum imap_sort_key key; const char *field; bool display; } addr[] = {
		{ IMAP_SORT_FROM, "from", false }, { IMAP_SORT_TO, "to", false },
		{ IMAP_SORT_CC, "cc", false }, { IMAP_SORT_DISPLAYFROM, "from", true },
		{ IMAP_SORT_DISPLAYTO, "to", true },
	};
	for (size_t i = 0; i < sizeof(addr) / sizeof(addr[0]); i++) {
		k = imap_sortkey_address(m, addr[i].field, addr[i].display);
		CU_ASSERT_STRING_EQUAL(d.sortkey[addr[i].key], k);
		free(k);
	}
	CU_ASSERT_EQUAL(d.has_sort_date ? d.sort_date : 42, imap_sent_date(m, 42));

	/* thread keys, as cmd-thread.c reads them */
	struct imap_thread_msg tm, want;
	memset(&tm, 0, sizeof(tm));
	memset(&want, 0, sizeof(want));
	CU_ASSERT_TRUE(imap_derived_thread_fill(&tm, &d, true, true, 42));
	struct buf mid = BUF_INIT, refs = BUF_INIT, irt = BUF_INIT, v = BUF_INIT;
	bool hm_ = imap_thread_header_get(text, len, "Message-ID", &mid);
	bool hr = imap_thread_header_get(text, len, "References", &refs);
	bool hi = imap_thread_header_get(text, len, "In-Reply-To", &irt);
	imap_thread_msg_set_ids(&want, hm_ ? buf_cstr(&mid) : NULL, mid.len,
				hr ? buf_cstr(&refs) : NULL, refs.len, hi ? buf_cstr(&irt) : NULL,
				irt.len);
	bool hs = imap_thread_header_get(text, len, "Subject", &v);
	char *base = imap_base_subject(hs ? buf_cstr(&v) : NULL, &want.reply_or_fwd);
	want.base_subject = imap_sortkey_fold(base);
	free(base);
	buf_reset(&v);
	bool hd = imap_thread_header_get(text, len, "Date", &v);
	CU_ASSERT_EQUAL(tm.date, imap_sent_date_value(hd ? buf_cstr(&v) : NULL, 42));
	CU_ASSERT_EQUAL((tm.message_id == NULL), (want.message_id == NULL));
	if (tm.message_id != NULL && want.message_id != NULL)
		CU_ASSERT_STRING_EQUAL(tm.message_id, want.message_id);
	CU_ASSERT_EQUAL_FATAL(tm.ref_count, want.ref_count);
	for (size_t i = 0; i < tm.ref_count; i++)
		CU_ASSERT_STRING_EQUAL(tm.refs[i], want.refs[i]);
	CU_ASSERT_STRING_EQUAL(tm.base_subject, want.base_subject);
	CU_ASSERT_EQUAL(tm.reply_or_fwd, want.reply_or_fwd);
	imap_thread_msg_free(&tm);
	imap_thread_msg_free(&want);
	buf_free(&mid);
	buf_free(&refs);
	buf_free(&irt);
	buf_free(&v);
	buf_free(&a);
	buf_free(&b);
	buf_free(&env);
	buf_free(&body);
	buf_free(&bs);
	buf_free(&hdr);
	imap_mime_free(&m);
	imap_derived_free(&d);
	buf_free(&rec);
}

static void test_derived_round_trip_matches_parsing(void)
{
	check_against_text(msg1, strlen(msg1));
	static const char lf[] = "From: x@y\nSubject: plain\nMessage-ID: <a@b>\n\nbody\n";
	check_against_text(lf, strlen(lf));
	static const char nohdr[] = "no header at all, no blank line";
	check_against_text(nohdr, strlen(nohdr));
	check_against_text("", 0);
	/* a few values spot-checked */
	struct buf rec = BUF_INIT;
	imap_derived_build((const unsigned char *)msg1, strlen(msg1), &rec);
	struct imap_derived d;
	CU_ASSERT_EQUAL_FATAL(imap_derived_decode(rec.data, rec.len, strlen(msg1), &d), 0);
	CU_ASSERT_PTR_NOT_NULL(strstr(d.envelope, "m1@example.org"));
	CU_ASSERT_PTR_NOT_NULL(strstr(d.bodystructure, "\"MIXED\""));
	CU_ASSERT_STRING_EQUAL(d.message_id, "m1@example.org");
	CU_ASSERT_EQUAL(d.ref_count, 2);
	CU_ASSERT_TRUE(d.has_sort_date);
	CU_ASSERT_EQUAL(d.sort_date, 1704186000);
	imap_derived_free(&d);
	/* every truncation of the record is refused, not half-read */
	for (size_t n = 0; n < rec.len; n++) {
		CU_ASSERT_EQUAL(imap_derived_decode(rec.data, n, strlen(msg1), &d), -1);
		CU_ASSERT_PTR_NULL(d.envelope);
	}
	buf_free(&rec);
}

static void test_derived_bounded_for_hostile_headers(void)
{
	/* 200 KB of To: addresses and a 100 KB header: neither ENVELOPE nor
	 * the header block is kept, the sort keys are cut, the record stays
	 * small; users of the record then parse the text. */
	struct buf t = BUF_INIT;
	buf_append_str(&t, "Subject: ");
	for (int i = 0; i < 2000; i++)
		buf_append_str(&t, "long subject words ");
	buf_append_str(&t, "\r\nTo: ");
	for (int i = 0; i < 10000; i++)
		buf_appendf(&t, "%su%d@example.org", i > 0 ? ", " : "", i);
	buf_append_str(&t, "\r\nReferences:");
	for (int i = 0; i < 3000; i++)
		buf_appendf(&t, " <ref%d.aaaaaaaaaaaaaaaa@example.org>", i);
	buf_append_str(&t, "\r\n\r\nbody\r\n");
	struct buf rec = BUF_INIT;
	imap_derived_build(t.data, t.len, &rec);
	CU_ASSERT(rec.len < 8 * 1024);
	CU_ASSERT(rec.len <= STOR_DERIVED_MAX);
	struct imap_derived d;
	CU_ASSERT_EQUAL_FATAL(imap_derived_decode(rec.data, rec.len, t.len, &d), 0);
	CU_ASSERT_EQUAL(d.have & IMAP_DERIVED_ENVELOPE, 0);
	CU_ASSERT_EQUAL(d.have & IMAP_DERIVED_HEADER, 0);
	CU_ASSERT_EQUAL(d.have & IMAP_DERIVED_THREAD, 0);
	CU_ASSERT_NOT_EQUAL(d.have & IMAP_DERIVED_BODYSTRUCTURE, 0);
	CU_ASSERT(strlen(d.sortkey[IMAP_SORT_SUBJECT]) <= IMAP_SORTKEY_MAX);
	struct imap_thread_msg tm;
	memset(&tm, 0, sizeof(tm));
	CU_ASSERT_FALSE(imap_derived_thread_fill(&tm, &d, true, true, 0));
	CU_ASSERT_PTR_NULL(tm.base_subject);
	imap_derived_free(&d);
	buf_free(&rec);
	buf_free(&t);
}

static void test_derived_stored_once_and_shared_by_copies(void)
{
	struct fixture f;
	setup(&f);
	struct guid g;
	uint32_t uid = append(&f, msg1, strlen(msg1), &g);
	const char *e;
	struct buf raw = BUF_INIT;
	CU_ASSERT_EQUAL(stor_derived_get(f.db, &g, &raw, &e), 0);
	struct imap_derived_stats s0 = imap_derived_stats;
	struct imap_derived d;
	struct buf text = BUF_INIT;
	bool text_read;
	CU_ASSERT_EQUAL(imap_derived_load(f.db, &g, strlen(msg1), &d, &text, &text_read, &e), 0);
	CU_ASSERT_TRUE(text_read);
	CU_ASSERT_EQUAL(text.len, strlen(msg1));
	CU_ASSERT_EQUAL(imap_derived_stats.built, s0.built + 1);
	CU_ASSERT_STRING_EQUAL(d.message_id, "m1@example.org");
	imap_derived_free(&d);
	CU_ASSERT_EQUAL(stor_derived_get(f.db, &g, &raw, &e), 1);
	/* a copy has the same text GUID: its load is a hit, nothing built */
	uint32_t copy_uid = 0;
	CU_ASSERT_EQUAL_FATAL(stor_msg_copy(f.db, &f.mb, uid, &f.other, 0, 0, &copy_uid, NULL, &e), 0);
	struct stor_msg m;
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(f.db, &f.other, copy_uid, &m, &e), 1);
	CU_ASSERT_TRUE(guid_equal(&m.guid, &g));
	buf_reset(&text);
	CU_ASSERT_EQUAL(imap_derived_load(f.db, &m.guid, m.size, &d, &text, &text_read, &e), 0);
	CU_ASSERT_FALSE(text_read);
	CU_ASSERT_EQUAL(text.len, 0);
	CU_ASSERT_EQUAL(imap_derived_stats.built, s0.built + 1);
	CU_ASSERT_EQUAL(imap_derived_stats.hits, s0.hits + 1);
	CU_ASSERT_STRING_EQUAL(d.message_id, "m1@example.org");
	imap_derived_free(&d);
	stor_msg_free(&m);
	/* the record survives a close and reopen */
	stor_close(&f.db);
	struct stor_settings set = { .dir = f.dir };
	char *err = NULL;
	CU_ASSERT_EQUAL_FATAL(stor_open(&set, &f.db, &err), 0);
	buf_reset(&raw);
	CU_ASSERT_EQUAL(stor_derived_get(f.db, &g, &raw, &e), 1);
	buf_free(&raw);
	buf_free(&text);
	teardown(&f);
}

static void test_derived_rebuilt_when_format_or_text_differs(void)
{
	struct fixture f;
	setup(&f);
	struct guid g;
	(void)append(&f, msg1, strlen(msg1), &g);
	const char *e;
	/* a record of a later (or earlier) format, then one of another text
	 * size, then garbage: each is rebuilt, never served */
	struct buf rec = BUF_INIT;
	imap_derived_build((const unsigned char *)msg1, strlen(msg1), &rec);
	for (int variant = 0; variant < 3; variant++) {
		struct buf bad = BUF_INIT;
		buf_append(&bad, rec.data, rec.len);
		if (variant == 0)
			bad.data[0] = IMAP_DERIVED_FORMAT + 1;
		else if (variant == 1)
			bad.data[8] ^= 1; /* low byte of the text size */
		else
			bad.len = 7;
		CU_ASSERT_EQUAL(stor_derived_put(f.db, &g, bad.data, bad.len, &e), 1);
		struct imap_derived_stats s0 = imap_derived_stats;
		struct imap_derived d;
		CU_ASSERT_EQUAL(imap_derived_load(f.db, &g, strlen(msg1), &d, NULL, NULL, &e), 0);
		CU_ASSERT_EQUAL(imap_derived_stats.built, s0.built + 1);
		CU_ASSERT_PTR_NOT_NULL_FATAL(d.message_id);
		CU_ASSERT_STRING_EQUAL(d.message_id, "m1@example.org");
		imap_derived_free(&d);
		/* and the rebuilt one is stored: the next load is a hit */
		struct buf now = BUF_INIT;
		CU_ASSERT_EQUAL(stor_derived_get(f.db, &g, &now, &e), 1);
		CU_ASSERT(same(now.data, now.len, rec.data, rec.len));
		buf_free(&now);
		buf_free(&bad);
	}
	buf_free(&rec);
	teardown(&f);
}

static void test_derived_removed_with_the_text(void)
{
	struct fixture f;
	setup(&f);
	struct guid g;
	uint32_t uid = append(&f, msg1, strlen(msg1), &g);
	const char *e;
	uint32_t copy_uid = 0;
	CU_ASSERT_EQUAL_FATAL(stor_msg_copy(f.db, &f.mb, uid, &f.other, 0, 0, &copy_uid, NULL, &e), 0);
	struct imap_derived d;
	CU_ASSERT_EQUAL(imap_derived_load(f.db, &g, strlen(msg1), &d, NULL, NULL, &e), 0);
	imap_derived_free(&d);
	struct buf raw = BUF_INIT;
	/* one of two messages expunged: the text and its record stay */
	CU_ASSERT_EQUAL(stor_msg_expunge(f.db, &f.mb, &uid, 1, 0, NULL, &e), 0);
	CU_ASSERT_EQUAL(stor_text_exists(f.db, &g, NULL, &e), 1);
	CU_ASSERT_EQUAL(stor_derived_get(f.db, &g, &raw, &e), 1);
	/* the last one: both go, and survive no reopen */
	CU_ASSERT_EQUAL(stor_msg_expunge(f.db, &f.other, &copy_uid, 1, 0, NULL, &e), 0);
	CU_ASSERT_EQUAL(stor_text_exists(f.db, &g, NULL, &e), 0);
	CU_ASSERT_EQUAL(stor_derived_get(f.db, &g, &raw, &e), 0);
	CU_ASSERT_EQUAL(stor_sync(f.db, &e), 0);
	stor_close(&f.db);
	struct stor_settings set = { .dir = f.dir };
	char *err = NULL;
	CU_ASSERT_EQUAL_FATAL(stor_open(&set, &f.db, &err), 0);
	CU_ASSERT_EQUAL(stor_derived_get(f.db, &g, &raw, &e), 0);
	/* no record is made for a text the store does not hold */
	CU_ASSERT_EQUAL(stor_derived_put(f.db, &g, "x", 1, &e), 0);
	CU_ASSERT_EQUAL(stor_derived_get(f.db, &g, &raw, &e), 0);
	CU_ASSERT_EQUAL(imap_derived_load(f.db, &g, strlen(msg1), &d, NULL, NULL, &e), -1);
	/* nor one over the limit */
	struct guid g2;
	(void)append(&f, "Subject: b\r\n\r\nx\r\n", 17, &g2);
	char *big = xcalloc(STOR_DERIVED_MAX + 1, 1);
	CU_ASSERT_EQUAL(stor_derived_put(f.db, &g2, big, STOR_DERIVED_MAX + 1, &e), -1);
	CU_ASSERT_EQUAL(stor_derived_get(f.db, &g2, &raw, &e), 0);
	free(big);
	buf_free(&raw);
	teardown(&f);
}

const struct test_case imap_derived_cases[] = {
	{ "record answers as parsing the text does", test_derived_round_trip_matches_parsing },
	{ "record bounded for hostile headers", test_derived_bounded_for_hostile_headers },
	{ "stored once, shared by copies", test_derived_stored_once_and_shared_by_copies },
	{ "rebuilt when format or text differs", test_derived_rebuilt_when_format_or_text_differs },
	{ "removed with the text", test_derived_removed_with_the_text },
	{ NULL, NULL },
};
