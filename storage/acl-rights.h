/* The IMAP ACL rights model (RFC 4314): rights as bits, parsing and
 * formatting of rights strings, identifiers, and what a user may do on a
 * mailbox given its ACL.  Pure functions: no store, no network.  It lives
 * in storage/ because the store keeps ACLs and every layer above (imap/,
 * replicator/'s admin commands) evaluates them the same way. */
#ifndef STORAGE_ACL_RIGHTS_H
#define STORAGE_ACL_RIGHTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"

enum acl_right {
	ACL_LOOKUP = 1 << 0,     /* l */
	ACL_READ = 1 << 1,       /* r */
	ACL_SEEN = 1 << 2,       /* s */
	ACL_WRITE = 1 << 3,      /* w */
	ACL_INSERT = 1 << 4,     /* i */
	ACL_POST = 1 << 5,       /* p */
	ACL_CREATE = 1 << 6,     /* k */
	ACL_DELETE_MBOX = 1 << 7, /* x */
	ACL_DELETE_MSG = 1 << 8, /* t */
	ACL_EXPUNGE = 1 << 9,    /* e */
	ACL_ADMIN = 1 << 10,     /* a */
};
#define ACL_ALL 0x7ffu
/* The letters in bit order, which is also the order rights are written. */
#define ACL_LETTERS "lrswipkxtea"
/* An owner keeps these whatever the ACL or acl_owner_rights says, so no
 * owner can lock themselves out of their own mailbox: with "a" they can
 * always repair the ACL (RFC 4314 section 2 lets a server force rights to
 * always be granted to an identifier). */
#define ACL_OWNER_ALWAYS (ACL_LOOKUP | ACL_ADMIN)
/* The owner of the public mailboxes ("Public/NAME" in IMAP): a name no
 * login can have (user names never start with '.'), so nobody has an
 * owner's rights on them: only their ACL gives rights. */
#define ACL_PUBLIC_OWNER ".public"
/* Whether owner may own mailboxes with ACLs: a user name, or the public
 * owner. */
bool acl_owner_valid(const char *owner);
/* Identifier length, without a leading '-'. */
#define ACL_IDENTIFIER_MAX 255
/* Records in one mailbox's ACL. */
#define ACL_MAX_ENTRIES 256

/* Parses a rights string: the letters of ACL_LETTERS, and the obsolete
 * "c" (= "kx") and "d" (= "te") of RFC 2086 (RFC 4314 2.1.1).  The empty
 * string is no rights.  Anything else fails with a reason naming the
 * offending character; nothing is returned then. */
int acl_rights_parse(const char *s, size_t len, uint32_t *rights_r, const char **error_r);

/* The owner's rights while no record names the owner, from the config
 * key acl_owner_rights (value NULL: unset, every right).  The value is a
 * rights string as above; ACL_OWNER_ALWAYS is added to it.  Fails, with the
 * reason, on a value acl_rights_parse() refuses. */
int acl_owner_rights_parse(const char *value, uint32_t *rights_r, const char **error_r);
/* The same for cfg's acl_owner_rights; the error (to free) is one line,
 * "FILE:LINE: acl_owner_rights: REASON", as for any bad config value. */
struct config;
int acl_owner_rights_config(const struct config *cfg, uint32_t *rights_r, char **error_r);

/* SETACL's mod-rights: a rights string, or one prefixed with '+' (add) or
 * '-' (remove). */
enum acl_mod { ACL_MOD_REPLACE, ACL_MOD_ADD, ACL_MOD_REMOVE };
int acl_mod_rights_parse(const char *s, size_t len, enum acl_mod *mod_r, uint32_t *rights_r,
			 const char **error_r);
/* The rights after applying a mod to old. */
uint32_t acl_mod_apply(enum acl_mod mod, uint32_t old, uint32_t rights);

/* Writes rights as letters in ACL_LETTERS order into out (NUL-terminated;
 * "" for none). */
void acl_rights_format(uint32_t rights, char out[sizeof(ACL_LETTERS)]);
/* The same for the IMAP responses (MYRIGHTS, ACL), followed by the
 * virtual rights RFC 4314 2.1.1 requires there: "c" when k or x is set,
 * "d" when t or e is set (what acl_rights_parse() reads them as).  Stored
 * records and `starling acl` keep the plain form. */
#define ACL_RIGHTS_RFC2086_SIZE (sizeof(ACL_LETTERS) + 2)
void acl_rights_format_rfc2086(uint32_t rights, char out[ACL_RIGHTS_RFC2086_SIZE]);

/* Identifiers: "anyone", "authenticated", or a user name (1..255 bytes of
 * letters, digits and ". _ @ + -", not starting with '.'), each optionally
 * prefixed with '-' (negative rights).  Case matters, as for logins. */
bool acl_identifier_valid(const char *id, size_t len, const char **error_r);

/* One record of an ACL. */
struct acl_entry {
	const char *identifier;
	uint32_t rights;
};

/* The rights user has on a mailbox of owner with the given ACL (RFC 4314
 * section 2): the union of the positive rights of every identifier that
 * names user ("anyone", "authenticated" for any logged-in user, the user
 * name), minus the union of the negative rights of those identifiers.  The
 * owner has owner_default (the admin's acl_owner_rights) while the ACL has
 * no record naming the owner itself (positive or negative), and
 * ACL_OWNER_ALWAYS in any case.  When
 * explain is not NULL it gets one line ("...\n") per record that applied
 * and one for the result: the answer to "why" for an operator. */
uint32_t acl_evaluate(const char *owner, const char *user, uint32_t owner_default,
		      const struct acl_entry *entries, size_t count, struct buf *explain);

#endif
