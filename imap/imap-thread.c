/* THREAD algorithms (RFC 5256, and REFS); see imap-thread.h. */
#include "imap/imap-thread.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/arr.h"
#include "lib/xalloc.h"

bool imap_thread_alg_parse(const char *name, size_t len, enum imap_thread_alg *alg_r)
{
	static const struct {
		const char *name;
		enum imap_thread_alg alg;
	} algs[] = {
		{ "ORDEREDSUBJECT", IMAP_THREAD_ORDEREDSUBJECT },
		{ "REFERENCES", IMAP_THREAD_REFERENCES },
		{ "REFS", IMAP_THREAD_REFS },
	};
	for (size_t i = 0; i < sizeof(algs) / sizeof(algs[0]); i++) {
		if (strlen(algs[i].name) == len && strncasecmp(algs[i].name, name, len) == 0) {
			*alg_r = algs[i].alg;
			return true;
		}
	}
	return false;
}

/* ---- message IDs ---- */

typedef ARRAY(char *) id_array;

/* Skips a comment starting at s[*i] == '(' (nested, with quoted pairs). */
static void skip_comment(const char *s, size_t len, size_t *i)
{
	unsigned depth = 0;
	for (; *i < len; (*i)++) {
		char c = s[*i];
		if (c == '\\') {
			(*i)++;
		} else if (c == '(') {
			depth++;
		} else if (c == ')') {
			if (--depth == 0) {
				(*i)++;
				return;
			}
		}
	}
}

/* Appends the message IDs of a field value to ids (up to max; 0 = no
 * limit).  An ID is what stands between < and >, with folding whitespace
 * removed; text outside angle brackets and comments is skipped, as
 * In-Reply-To often carries "<id> (message from ...)". */
static void parse_ids(const char *s, size_t len, id_array *ids, size_t max)
{
	size_t i = 0;
	while (i < len && (max == 0 || ids->count < max)) {
		if (s[i] == '(') {
			skip_comment(s, len, &i);
			continue;
		}
		if (s[i] != '<') {
			i++;
			continue;
		}
		size_t start = ++i;
		while (i < len && s[i] != '>' && s[i] != '<')
			i++;
		if (i >= len)
			return;
		if (s[i] == '<')
			continue; /* "<<id>": restart at the inner bracket */
		size_t end = i++;
		char *id = xmalloc(end - start + 1);
		size_t n = 0;
		for (size_t k = start; k < end; k++)
			if (s[k] != ' ' && s[k] != '\t' && s[k] != '\r' && s[k] != '\n')
				id[n++] = s[k];
		id[n] = '\0';
		if (n == 0 || n > IMAP_THREAD_MAX_ID_LEN) {
			free(id);
			continue;
		}
		ARRAY_PUSH(ids, id);
	}
}

void imap_thread_msg_set_ids(struct imap_thread_msg *m, const char *message_id, size_t mid_len,
			     const char *references, size_t ref_len, const char *in_reply_to,
			     size_t irt_len)
{
	id_array ids = ARRAY_INIT;
	free(m->message_id);
	m->message_id = NULL;
	for (size_t i = 0; i < m->ref_count; i++)
		free(m->refs[i]);
	free(m->refs);
	m->refs = NULL;
	m->ref_count = 0;

	if (message_id != NULL) {
		parse_ids(message_id, mid_len, &ids, 1);
		if (ids.count > 0)
			m->message_id = ids.items[0];
		ids.count = 0;
	}
	if (references != NULL)
		parse_ids(references, ref_len, &ids, 0);
	if (ids.count == 0 && in_reply_to != NULL)
		parse_ids(in_reply_to, irt_len, &ids, 1);
	if (ids.count > IMAP_THREAD_MAX_REFS) {
		/* Keep the root and the nearest ancestors: the middle of an
		 * overlong chain only adds links between dummies. */
		size_t drop = ids.count - IMAP_THREAD_MAX_REFS;
		for (size_t i = 1; i <= drop; i++)
			free(ids.items[i]);
		memmove(&ids.items[1], &ids.items[1 + drop],
			(ids.count - 1 - drop) * sizeof(ids.items[0]));
		ids.count -= drop;
	}
	if (ids.count > 0) {
		m->refs = ids.items;
		m->ref_count = ids.count;
	} else {
		ARRAY_FREE(&ids);
	}
}

void imap_thread_msg_keep_parent(struct imap_thread_msg *m)
{
	if (m->ref_count < 2)
		return;
	for (size_t i = 0; i + 1 < m->ref_count; i++)
		free(m->refs[i]);
	m->refs[0] = m->refs[m->ref_count - 1];
	m->ref_count = 1;
}

size_t imap_thread_msg_id_bytes(const struct imap_thread_msg *m)
{
	size_t n = m->message_id != NULL ? strlen(m->message_id) + 1 : 0;
	for (size_t i = 0; i < m->ref_count; i++)
		n += strlen(m->refs[i]) + 1;
	return n;
}

void imap_thread_msg_free(struct imap_thread_msg *m)
{
	free(m->message_id);
	for (size_t i = 0; i < m->ref_count; i++)
		free(m->refs[i]);
	free(m->refs);
	free(m->base_subject);
	m->message_id = NULL;
	m->refs = NULL;
	m->ref_count = 0;
	m->base_subject = NULL;
}

/* ---- header fields ---- */

bool imap_thread_header_get(const char *text, size_t len, const char *name, struct buf *out)
{
	size_t name_len = strlen(name);
	size_t pos = 0;
	while (pos < len) {
		size_t eol = pos;
		while (eol < len && text[eol] != '\n')
			eol++;
		size_t line_end = eol > pos && text[eol - 1] == '\r' ? eol - 1 : eol;
		if (line_end == pos)
			return false; /* the blank line that ends the header */
		if (line_end - pos > name_len && text[pos + name_len] == ':' &&
		    strncasecmp(text + pos, name, name_len) == 0) {
			size_t v = pos + name_len + 1;
			/* The value runs on over continuation lines (those
			 * starting with white space). */
			size_t end = eol;
			while (end + 1 < len && (text[end + 1] == ' ' || text[end + 1] == '\t')) {
				end++;
				while (end < len && text[end] != '\n')
					end++;
			}
			if (end > len)
				end = len;
			while (v < end && (text[v] == ' ' || text[v] == '\t'))
				v++;
			for (size_t k = v; k < end; k++)
				if (text[k] != '\r' && text[k] != '\n')
					buf_append_byte(out, (unsigned char)text[k]);
			return true;
		}
		pos = eol + 1;
	}
	return false;
}

/* ---- the thread tree ---- */

struct tnode {
	int msg;       /* index into msgs, -1 for a dummy */
	int parent;
	int first_child, next;
	size_t child_count;
	size_t links;  /* step 1: how many nodes have this one as parent */
	int dummy_root; /* the root dummy this node replaced, or -1 */
	int64_t key;   /* sort date */
	size_t order;  /* tie-break: input position */
};

typedef ARRAY(struct tnode) tnode_array;
typedef ARRAY(int) int_array;

struct idtable {
	const char **keys;
	int *vals;
	size_t mask;
};

static uint64_t hash_str(const char *s)
{
	uint64_t h = 1469598103934665603ULL;
	for (; *s != '\0'; s++) {
		h ^= (unsigned char)*s;
		h *= 1099511628211ULL;
	}
	return h;
}

static void idtable_init(struct idtable *t, size_t entries)
{
	size_t cap = 16;
	while (cap < entries * 2)
		cap *= 2;
	t->keys = xcalloc(cap, sizeof(*t->keys));
	t->vals = xcalloc(cap, sizeof(*t->vals));
	t->mask = cap - 1;
}

static void idtable_free(struct idtable *t)
{
	free(t->keys);
	free(t->vals);
}

/* Returns the slot of key: its own, or the empty one where it belongs. */
static size_t idtable_slot(const struct idtable *t, const char *key)
{
	size_t i = (size_t)hash_str(key) & t->mask;
	while (t->keys[i] != NULL && strcmp(t->keys[i], key) != 0)
		i = (i + 1) & t->mask;
	return i;
}

struct tctx {
	enum imap_thread_alg alg;
	const struct imap_thread_msg *msgs;
	tnode_array nodes;
	struct idtable ids;
	int_array roots;
};

static int new_node(struct tctx *t, int msg)
{
	struct tnode n = { .msg = msg, .parent = -1, .first_child = -1, .next = -1,
			   .dummy_root = -1 };
	n.order = msg >= 0 ? (size_t)msg : SIZE_MAX;
	ARRAY_PUSH(&t->nodes, n);
	return (int)t->nodes.count - 1;
}

/* The node for a message ID, created as a dummy when first seen. */
static int id_node(struct tctx *t, const char *id)
{
	size_t slot = idtable_slot(&t->ids, id);
	if (t->ids.keys[slot] != NULL)
		return t->ids.vals[slot];
	int n = new_node(t, -1);
	t->ids.keys[slot] = id;
	t->ids.vals[slot] = n;
	return n;
}

/* Whether making child a child of parent would close a loop.  A node
 * nothing links to is nobody's ancestor, which keeps a long chain of
 * replies (each one new and childless when linked) linear.  Otherwise the
 * walk up from parent is bounded: past IMAP_THREAD_MAX_DEPTH ancestors the
 * link is refused as if it looped, so messages crafted to arrive after
 * their replies at the bottom of a deep chain cost O(n * bound), not
 * O(n^2). */
static bool would_loop(const struct tctx *t, int parent, int child)
{
	if (t->nodes.items[child].links == 0)
		return parent == child;
	unsigned steps = 0;
	for (int x = parent; x >= 0; x = t->nodes.items[x].parent) {
		if (x == child || ++steps > IMAP_THREAD_MAX_DEPTH)
			return true;
	}
	return false;
}

static void set_parent(struct tctx *t, int node, int parent)
{
	int old = t->nodes.items[node].parent;
	if (old >= 0)
		t->nodes.items[old].links--;
	t->nodes.items[node].parent = parent;
	if (parent >= 0)
		t->nodes.items[parent].links++;
}

/* RFC 5256 3.2 step 1: parent links from the message IDs.  Only parent
 * pointers change here; child lists are built once the links are final. */
static void link_messages(struct tctx *t, size_t count)
{
	const struct imap_thread_msg *msgs = t->msgs;
	for (size_t i = 0; i < count; i++) {
		const struct imap_thread_msg *m = &msgs[i];
		int node = -1;
		if (m->message_id != NULL) {
			size_t slot = idtable_slot(&t->ids, m->message_id);
			if (t->ids.keys[slot] == NULL) {
				node = new_node(t, (int)i);
				t->ids.keys[slot] = m->message_id;
				t->ids.vals[slot] = node;
			} else if (t->nodes.items[t->ids.vals[slot]].msg < 0) {
				node = t->ids.vals[slot];
				t->nodes.items[node].msg = (int)i;
				t->nodes.items[node].order = i;
			}
		}
		/* No Message-ID, or a duplicate: the message gets an ID of
		 * its own that nothing can refer to. */
		if (node < 0)
			node = new_node(t, (int)i);

		int prev = -1;
		for (size_t r = 0; r < m->ref_count; r++) {
			int cur = id_node(t, m->refs[r]);
			/* (A): link consecutive references unless the child
			 * already has a parent or a loop would form. */
			if (prev >= 0 && t->nodes.items[cur].parent < 0 && !would_loop(t, prev, cur))
				set_parent(t, cur, prev);
			prev = cur;
		}
		/* (B): the last reference is the parent; an existing parent
		 * came from some other message's truncated References and
		 * gives way, even when the new link is then refused. */
		set_parent(t, node, -1);
		if (prev >= 0 && !would_loop(t, prev, node))
			set_parent(t, node, prev);
	}
}

static void add_child(struct tctx *t, int parent, int child)
{
	struct tnode *c = &t->nodes.items[child];
	struct tnode *p = &t->nodes.items[parent];
	c->parent = parent;
	c->next = p->first_child;
	p->first_child = child;
	p->child_count++;
}

/* Steps 2 and 3: child lists and the root set, then dummy pruning.  Nodes
 * are handled children first (reverse preorder), so a dummy's children are
 * final when it is spliced out. */
static void build_and_prune(struct tctx *t)
{
	size_t n = t->nodes.count;
	/* Children in reverse index order so that pushing to the front
	 * leaves them in index order. */
	for (size_t i = n; i-- > 0;) {
		int p = t->nodes.items[i].parent;
		if (p >= 0)
			add_child(t, p, (int)i);
	}
	int_array order = ARRAY_INIT;
	int_array stack = ARRAY_INIT;
	for (size_t i = 0; i < n; i++) {
		if (t->nodes.items[i].parent >= 0)
			continue;
		ARRAY_PUSH(&stack, (int)i);
		while (stack.count > 0) {
			int x = stack.items[--stack.count];
			ARRAY_PUSH(&order, x);
			for (int c = t->nodes.items[x].first_child; c >= 0; c = t->nodes.items[c].next)
				ARRAY_PUSH(&stack, c);
		}
	}
	for (size_t k = order.count; k-- > 0;) {
		int x = order.items[k];
		struct tnode *nx = &t->nodes.items[x];
		/* Rebuild the child list without dummies: a dummy child is
		 * replaced by its own (already dummy-free) children. */
		int head = -1, tail = -1;
		size_t cnt = 0;
		for (int c = nx->first_child; c >= 0;) {
			int next = t->nodes.items[c].next;
			if (t->nodes.items[c].msg >= 0) {
				t->nodes.items[c].next = -1;
				if (tail >= 0)
					t->nodes.items[tail].next = c;
				else
					head = c;
				tail = c;
				cnt++;
			} else if (t->nodes.items[c].first_child >= 0) {
				int gc = t->nodes.items[c].first_child;
				if (tail >= 0)
					t->nodes.items[tail].next = gc;
				else
					head = gc;
				for (; gc >= 0; gc = t->nodes.items[gc].next) {
					t->nodes.items[gc].parent = x;
					tail = gc;
					cnt++;
				}
			}
			c = next;
		}
		nx = &t->nodes.items[x];
		nx->first_child = head;
		nx->child_count = cnt;
		if (nx->parent >= 0)
			continue;
		/* A root dummy stays only when it holds several threads
		 * together; with one child that child becomes the root. */
		if (nx->msg >= 0 || cnt > 1)
			ARRAY_PUSH(&t->roots, x);
		else if (cnt == 1) {
			t->nodes.items[head].parent = -1;
			t->nodes.items[head].dummy_root = x;
			ARRAY_PUSH(&t->roots, head);
		}
	}
	ARRAY_FREE(&order);
	ARRAY_FREE(&stack);
}

static const struct tctx *sort_ctx;

static int cmp_nodes(const void *a, const void *b)
{
	const struct tnode *x = &sort_ctx->nodes.items[*(const int *)a];
	const struct tnode *y = &sort_ctx->nodes.items[*(const int *)b];
	if (x->key != y->key)
		return x->key < y->key ? -1 : 1;
	if (x->order != y->order)
		return x->order < y->order ? -1 : 1;
	return 0;
}

static void sort_ints(struct tctx *t, int *items, size_t count)
{
	if (count < 2)
		return;
	sort_ctx = t;
	qsort(items, count, sizeof(*items), cmp_nodes);
	sort_ctx = NULL;
}

/* Sorts node x's children by sent date; a dummy takes the key of its
 * first child afterwards. */
static void sort_children(struct tctx *t, int x, int_array *tmp)
{
	struct tnode *nx = &t->nodes.items[x];
	if (nx->child_count > 1) {
		tmp->count = 0;
		for (int c = nx->first_child; c >= 0; c = t->nodes.items[c].next)
			ARRAY_PUSH(tmp, c);
		sort_ints(t, tmp->items, tmp->count);
		nx = &t->nodes.items[x];
		nx->first_child = tmp->items[0];
		for (size_t i = 0; i < tmp->count; i++)
			t->nodes.items[tmp->items[i]].next =
				i + 1 < tmp->count ? tmp->items[i + 1] : -1;
	}
	nx = &t->nodes.items[x];
	if (nx->msg < 0 && nx->first_child >= 0) {
		nx->key = t->nodes.items[nx->first_child].key;
		nx->order = t->nodes.items[nx->first_child].order;
	}
}

/* Step 6 (and the child sorting of step 4): every sibling set by date.
 * Children of a node are always sorted before the node's own key is used,
 * since only dummies (roots) borrow a key from a child. */
static void sort_all(struct tctx *t)
{
	int_array tmp = ARRAY_INIT;
	for (size_t i = 0; i < t->nodes.count; i++)
		if (t->nodes.items[i].msg >= 0)
			sort_children(t, (int)i, &tmp);
	for (size_t i = 0; i < t->roots.count; i++)
		if (t->nodes.items[t->roots.items[i]].msg < 0)
			sort_children(t, t->roots.items[i], &tmp);
	ARRAY_FREE(&tmp);
}

static const char *node_subject(const struct tctx *t, int x, bool *reply_r)
{
	const struct tnode *nx = &t->nodes.items[x];
	if (nx->msg < 0)
		nx = &t->nodes.items[nx->first_child];
	const struct imap_thread_msg *m = &t->msgs[nx->msg];
	*reply_r = m->reply_or_fwd;
	return m->base_subject != NULL ? m->base_subject : "";
}

/* Step 5: threads whose roots share a base subject are merged. */
static void group_by_subject(struct tctx *t)
{
	struct idtable subj;
	idtable_init(&subj, t->roots.count);
	/* (B) the subject table: a dummy wins over a message, a message
	 * that is not a reply over one that is. */
	for (size_t i = 0; i < t->roots.count; i++) {
		int r = t->roots.items[i];
		bool reply;
		const char *s = node_subject(t, r, &reply);
		if (*s == '\0')
			continue;
		size_t slot = idtable_slot(&subj, s);
		if (subj.keys[slot] == NULL) {
			subj.keys[slot] = s;
			subj.vals[slot] = (int)i;
			continue;
		}
		int old = t->roots.items[subj.vals[slot]];
		bool old_reply;
		(void)node_subject(t, old, &old_reply);
		if (t->nodes.items[old].msg >= 0 &&
		    (t->nodes.items[r].msg < 0 || (old_reply && !reply)))
			subj.vals[slot] = (int)i;
	}
	/* (C) merging; the table holds positions in roots, where a removed
	 * root becomes -1. */
	for (size_t i = 0; i < t->roots.count; i++) {
		int r = t->roots.items[i];
		if (r < 0)
			continue;
		bool reply;
		const char *s = node_subject(t, r, &reply);
		if (*s == '\0')
			continue;
		size_t slot = idtable_slot(&subj, s);
		size_t pos = (size_t)subj.vals[slot];
		if (pos == i)
			continue;
		int o = t->roots.items[pos];
		bool o_dummy = t->nodes.items[o].msg < 0, r_dummy = t->nodes.items[r].msg < 0;
		bool o_reply;
		(void)node_subject(t, o, &o_reply);
		if (o_dummy && r_dummy) {
			int c = t->nodes.items[r].first_child;
			while (c >= 0) {
				int next = t->nodes.items[c].next;
				add_child(t, o, c);
				c = next;
			}
		} else if (o_dummy || (reply && !o_reply)) {
			add_child(t, o, r);
		} else {
			int d = new_node(t, -1);
			add_child(t, d, o);
			add_child(t, d, r);
			t->roots.items[pos] = d;
		}
		t->roots.items[i] = -1;
	}
	size_t n = 0;
	for (size_t i = 0; i < t->roots.count; i++)
		if (t->roots.items[i] >= 0)
			t->roots.items[n++] = t->roots.items[i];
	t->roots.count = n;
	idtable_free(&subj);
}

/* REFS orders threads by their newest message.  Ties go as Dovecot's:
 * threads under a missing message (a dummy, even one replaced by its only
 * child) first, in the order their IDs were first seen, then the others
 * by their root's sequence number. */
static void key_newest(struct tctx *t, int root, int_array *stack)
{
	struct tnode *nr = &t->nodes.items[root];
	if (nr->msg < 0)
		nr->order = (size_t)root;
	else if (nr->dummy_root >= 0)
		nr->order = (size_t)nr->dummy_root;
	else
		nr->order = t->nodes.count + (size_t)nr->msg;

	int64_t newest = INT64_MIN;
	stack->count = 0;
	ARRAY_PUSH(stack, root);
	while (stack->count > 0) {
		int x = stack->items[--stack->count];
		const struct tnode *nx = &t->nodes.items[x];
		if (nx->msg >= 0 && t->msgs[nx->msg].date > newest)
			newest = t->msgs[nx->msg].date;
		for (int c = nx->first_child; c >= 0; c = t->nodes.items[c].next)
			ARRAY_PUSH(stack, c);
	}
	t->nodes.items[root].key = newest;
}

/* Writes one thread: a chain of single children as "1 2 3", several
 * children as nested lists "(4)(5)", without recursion. */
static void emit_thread(const struct tctx *t, int root, int_array *stack, struct buf *out)
{
	stack->count = 0;
	buf_append_byte(out, '(');
	bool space = false;
	int cur = root;
	for (;;) {
		for (;;) {
			const struct tnode *nx = &t->nodes.items[cur];
			if (nx->msg >= 0) {
				if (space)
					buf_append_byte(out, ' ');
				buf_appendf(out, "%u", t->msgs[nx->msg].id);
				space = true;
			}
			if (nx->child_count == 0)
				break;
			if (nx->child_count == 1) {
				cur = nx->first_child;
				continue;
			}
			if (space)
				buf_append_byte(out, ' ');
			ARRAY_PUSH(stack, t->nodes.items[nx->first_child].next);
			buf_append_byte(out, '(');
			space = false;
			cur = nx->first_child;
		}
		for (;;) {
			buf_append_byte(out, ')');
			if (stack->count == 0)
				return;
			int nx = stack->items[stack->count - 1];
			if (nx >= 0) {
				stack->items[stack->count - 1] = t->nodes.items[nx].next;
				buf_append_byte(out, '(');
				space = false;
				cur = nx;
				break;
			}
			/* The nested lists end, and with them the element
			 * that held them. */
			stack->count--;
		}
	}
}

static const struct imap_thread_msg *subj_msgs;

static int cmp_subject(const void *a, const void *b)
{
	const struct imap_thread_msg *x = &subj_msgs[*(const int *)a];
	const struct imap_thread_msg *y = &subj_msgs[*(const int *)b];
	int c = strcmp(x->base_subject != NULL ? x->base_subject : "",
		       y->base_subject != NULL ? y->base_subject : "");
	if (c != 0)
		return c;
	if (x->date != y->date)
		return x->date < y->date ? -1 : 1;
	return *(const int *)a < *(const int *)b ? -1 : 1;
}

/* RFC 5256 3.1: one thread per base subject, all replies children of the
 * first message. */
static void ordered_subject(struct tctx *t, size_t count)
{
	int *idx = xmalloc((count > 0 ? count : 1) * sizeof(*idx));
	for (size_t i = 0; i < count; i++)
		idx[i] = (int)i;
	subj_msgs = t->msgs;
	qsort(idx, count, sizeof(*idx), cmp_subject);
	subj_msgs = NULL;
	for (size_t i = 0; i < count; i++)
		(void)new_node(t, (int)i);
	for (size_t i = 0; i < count;) {
		size_t j = i + 1;
		const char *s = t->msgs[idx[i]].base_subject;
		if (s == NULL)
			s = "";
		while (j < count) {
			const char *s2 = t->msgs[idx[j]].base_subject;
			if (strcmp(s, s2 != NULL ? s2 : "") != 0)
				break;
			j++;
		}
		/* Children are pushed to the front: add them in reverse. */
		for (size_t k = j; k-- > i + 1;)
			add_child(t, idx[i], idx[k]);
		ARRAY_PUSH(&t->roots, idx[i]);
		i = j;
	}
	free(idx);
}

void imap_thread_build(enum imap_thread_alg alg, const struct imap_thread_msg *msgs, size_t count,
		       struct buf *out)
{
	struct tctx t;
	memset(&t, 0, sizeof(t));
	t.alg = alg;
	t.msgs = msgs;
	if (alg == IMAP_THREAD_ORDEREDSUBJECT) {
		ordered_subject(&t, count);
	} else {
		size_t ids = count;
		for (size_t i = 0; i < count; i++)
			ids += msgs[i].ref_count;
		idtable_init(&t.ids, ids);
		link_messages(&t, count);
		build_and_prune(&t);
	}
	for (size_t i = 0; i < t.nodes.count; i++)
		if (t.nodes.items[i].msg >= 0)
			t.nodes.items[i].key = msgs[t.nodes.items[i].msg].date;
	/* Step 4: siblings and top-level threads by date; step 5 needs
	 * the roots in that order. */
	sort_all(&t);
	sort_ints(&t, t.roots.items, t.roots.count);
	if (alg == IMAP_THREAD_REFERENCES) {
		group_by_subject(&t);
		/* Step 6: merging added children to roots. */
		sort_all(&t);
		sort_ints(&t, t.roots.items, t.roots.count);
	}
	int_array stack = ARRAY_INIT;
	if (alg == IMAP_THREAD_REFS) {
		for (size_t i = 0; i < t.roots.count; i++)
			key_newest(&t, t.roots.items[i], &stack);
		sort_ints(&t, t.roots.items, t.roots.count);
	}
	for (size_t i = 0; i < t.roots.count; i++)
		emit_thread(&t, t.roots.items[i], &stack, out);
	ARRAY_FREE(&stack);
	ARRAY_FREE(&t.roots);
	ARRAY_FREE(&t.nodes);
	if (alg != IMAP_THREAD_ORDEREDSUBJECT)
		idtable_free(&t.ids);
}
