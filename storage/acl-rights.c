/* RFC 4314 rights: see acl-rights.h. */
#include "storage/acl-rights.h"

#include <stdio.h>
#include <string.h>

#include "lib/config.h"
#include "lib/xalloc.h"

static int letter_bit(char c, uint32_t *bits_r)
{
	const char *p = c != '\0' ? strchr(ACL_LETTERS, c) : NULL;
	if (p != NULL) {
		*bits_r = 1u << (p - ACL_LETTERS);
		return 0;
	}
	/* RFC 4314 2.1.1: a client that sets the obsolete rights means every
	 * right they were split into. */
	if (c == 'c') {
		*bits_r = ACL_CREATE | ACL_DELETE_MBOX;
		return 0;
	}
	if (c == 'd') {
		*bits_r = ACL_DELETE_MSG | ACL_EXPUNGE;
		return 0;
	}
	return -1;
}

int acl_rights_parse(const char *s, size_t len, uint32_t *rights_r, const char **error_r)
{
	static char msg[64];
	uint32_t rights = 0;
	if (len > 64) {
		*error_r = "rights string too long";
		return -1;
	}
	for (size_t i = 0; i < len; i++) {
		uint32_t bit;
		if (letter_bit(s[i], &bit) < 0) {
			unsigned char c = (unsigned char)s[i];
			if (c > 0x20 && c < 0x7f)
				snprintf(msg, sizeof(msg), "unknown right '%c'", c);
			else
				snprintf(msg, sizeof(msg), "unknown right (byte 0x%02x)", c);
			*error_r = msg;
			return -1;
		}
		rights |= bit;
	}
	*rights_r = rights;
	return 0;
}

int acl_owner_rights_parse(const char *value, uint32_t *rights_r, const char **error_r)
{
	uint32_t rights = ACL_ALL;
	if (value != NULL && acl_rights_parse(value, strlen(value), &rights, error_r) < 0)
		return -1;
	*rights_r = rights | ACL_OWNER_ALWAYS;
	return 0;
}

int acl_owner_rights_config(const struct config *cfg, uint32_t *rights_r, char **error_r)
{
	const char *why;
	if (acl_owner_rights_parse(cfg->acl_owner_rights, rights_r, &why) == 0)
		return 0;
	*error_r = xasprintf("%s:%u: acl_owner_rights: %s", cfg->path, cfg->acl_owner_rights_line,
			     why);
	return -1;
}

int acl_mod_rights_parse(const char *s, size_t len, enum acl_mod *mod_r, uint32_t *rights_r,
			 const char **error_r)
{
	enum acl_mod mod = ACL_MOD_REPLACE;
	if (len > 0 && (s[0] == '+' || s[0] == '-')) {
		mod = s[0] == '+' ? ACL_MOD_ADD : ACL_MOD_REMOVE;
		s++;
		len--;
	}
	if (acl_rights_parse(s, len, rights_r, error_r) < 0)
		return -1;
	*mod_r = mod;
	return 0;
}

uint32_t acl_mod_apply(enum acl_mod mod, uint32_t old, uint32_t rights)
{
	switch (mod) {
	case ACL_MOD_ADD:
		return old | rights;
	case ACL_MOD_REMOVE:
		return old & ~rights;
	case ACL_MOD_REPLACE:
		break;
	}
	return rights;
}

void acl_rights_format(uint32_t rights, char out[sizeof(ACL_LETTERS)])
{
	size_t n = 0;
	for (size_t i = 0; i < sizeof(ACL_LETTERS) - 1; i++) {
		if (rights & (1u << i))
			out[n++] = ACL_LETTERS[i];
	}
	out[n] = '\0';
}

void acl_rights_format_rfc2086(uint32_t rights, char out[ACL_RIGHTS_RFC2086_SIZE])
{
	acl_rights_format(rights, out);
	size_t n = strlen(out);
	if (rights & (ACL_CREATE | ACL_DELETE_MBOX))
		out[n++] = 'c';
	if (rights & (ACL_DELETE_MSG | ACL_EXPUNGE))
		out[n++] = 'd';
	out[n] = '\0';
}

bool acl_identifier_valid(const char *id, size_t len, const char **error_r)
{
	if (len > 0 && id[0] == '-') {
		id++;
		len--;
	}
	if (len == 0) {
		*error_r = "empty identifier";
		return false;
	}
	if (len > ACL_IDENTIFIER_MAX) {
		*error_r = "identifier too long";
		return false;
	}
	if (id[0] == '.') {
		*error_r = "identifier starts with '.'";
		return false;
	}
	for (size_t i = 0; i < len; i++) {
		char c = id[i];
		bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
			  c == '.' || c == '_' || c == '@' || c == '+' || c == '-';
		if (!ok) {
			*error_r = "invalid character in identifier";
			return false;
		}
	}
	return true;
}

bool acl_owner_valid(const char *owner)
{
	const char *why;
	if (strcmp(owner, ACL_PUBLIC_OWNER) == 0)
		return true;
	return owner[0] != '-' && acl_identifier_valid(owner, strlen(owner), &why);
}

static bool names_user(const char *id, const char *user)
{
	return strcmp(id, "anyone") == 0 || strcmp(id, "authenticated") == 0 ||
	       strcmp(id, user) == 0;
}

uint32_t acl_evaluate(const char *owner, const char *user, uint32_t owner_default,
		      const struct acl_entry *entries, size_t count, struct buf *explain)
{
	uint32_t pos = 0, neg = 0;
	bool owner_named = false;
	bool is_owner = strcmp(owner, user) == 0;
	char r[sizeof(ACL_LETTERS)];
	for (size_t i = 0; i < count; i++) {
		const char *id = entries[i].identifier;
		bool negative = id[0] == '-';
		const char *name = negative ? id + 1 : id;
		if (is_owner && strcmp(name, owner) == 0)
			owner_named = true;
		if (!names_user(name, user))
			continue;
		if (negative)
			neg |= entries[i].rights;
		else
			pos |= entries[i].rights;
		if (explain != NULL) {
			acl_rights_format(entries[i].rights, r);
			buf_appendf(explain, "%s \"%s\" %s: %s\n", negative ? "denied by" : "granted by",
				    id, r, strcmp(name, user) == 0 ? "names the user"
						   : strcmp(name, "anyone") == 0 ? "everyone"
						   : "every logged-in user");
		}
	}
	uint32_t rights = pos & ~neg;
	if (is_owner && !owner_named) {
		rights = owner_default;
		if (explain != NULL) {
			acl_rights_format(owner_default, r);
			buf_appendf(explain,
				    "owner: \"%s\", the owner's default (acl_owner_rights; no record names the owner)\n",
				    r);
		}
	}
	if (is_owner && (rights & ACL_OWNER_ALWAYS) != ACL_OWNER_ALWAYS) {
		rights |= ACL_OWNER_ALWAYS;
		if (explain != NULL)
			buf_append_str(explain, "owner: always keeps l and a\n");
	}
	if (explain != NULL) {
		acl_rights_format(rights, r);
		buf_appendf(explain, "result: \"%s\"\n", r);
	}
	return rights;
}
