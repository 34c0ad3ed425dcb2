/* Commands of any state and the not-authenticated state: CAPABILITY, NOOP,
 * LOGOUT, ID, ENABLE, STARTTLS, LOGIN, AUTHENTICATE PLAIN (with SASL-IR).
 *
 * Passwords are checked with passwd_verify() (constant-time compare) and
 * never logged.  Plaintext authentication without TLS is refused unless the
 * client is on loopback or plaintext_auth = yes.  At first login the user's
 * default mailboxes are created through the seam. */
#include "config.h"

#include "imap/imap-commands.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/base64.h"
#include "lib/log.h"
#include "lib/passwd.h"
#include "storage/storage-users.h"
#include "lib/xalloc.h"

#define IMAP_MAX_LOGIN_FAILURES 3

bool imap_cmd_capability(struct imap_cmd *cmd)
{
	struct buf caps = BUF_INIT;
	imap_capabilities(cmd->client, &caps);
	imap_client_printf(cmd->client, "* CAPABILITY %s\r\n", buf_cstr(&caps));
	buf_free(&caps);
	return imap_cmd_done(cmd, "OK", "Capability completed");
}

bool imap_cmd_noop(struct imap_cmd *cmd)
{
	return imap_cmd_done(cmd, "OK", "NOOP completed");
}

bool imap_cmd_logout(struct imap_cmd *cmd)
{
	struct imap_client *c = cmd->client;
	imap_client_printf(c, "* BYE Logging out\r\n");
	c->state = IMAP_STATE_LOGOUT;
	imap_sel_close(c);
	imap_client_close_after_output(c);
	return imap_cmd_done(cmd, "OK", "Logout completed");
}

bool imap_cmd_id(struct imap_cmd *cmd)
{
	if (cmd->count != 1 || (cmd->args[0].type != IMAP_ARG_LIST &&
				!imap_arg_atom_eq(&cmd->args[0], "NIL")))
		return imap_cmd_done(cmd, "BAD", "ID takes NIL or a list");
	imap_client_printf(cmd->client, "* ID (\"name\" \"Starling\" \"version\" \"%s\")\r\n",
			   PACKAGE_VERSION);
	return imap_cmd_done(cmd, "OK", "ID completed");
}

bool imap_cmd_enable(struct imap_cmd *cmd)
{
	struct imap_client *c = cmd->client;
	if (cmd->count == 0)
		return imap_cmd_done(cmd, "BAD", "ENABLE needs capabilities");
	struct buf line = BUF_INIT;
	buf_append_str(&line, "* ENABLED");
	for (size_t i = 0; i < cmd->count; i++) {
		if (cmd->args[i].type != IMAP_ARG_ATOM) {
			buf_free(&line);
			return imap_cmd_done(cmd, "BAD", "Invalid capability");
		}
		if (strcasecmp(cmd->args[i].str, "CONDSTORE") == 0 && !c->condstore) {
			c->condstore = true;
			buf_append_str(&line, " CONDSTORE");
		} else if (strcasecmp(cmd->args[i].str, "QRESYNC") == 0 && !c->qresync) {
			c->qresync = true;
			c->condstore = true;
			buf_append_str(&line, " QRESYNC");
		} else if (strcasecmp(cmd->args[i].str, "IMAP4rev2") == 0 && !c->rev2) {
			/* RFC 9051: from now on, IMAP4rev2's rules
			 * (imap-util.c, cmd-select.c, imap-sync.c ...) */
			c->rev2 = true;
			if (c->sel != NULL)
				c->sel->recent.count = 0;
			buf_append_str(&line, " IMAP4rev2");
		}
	}
	buf_append_str(&line, "\r\n");
	imap_client_write(c, line.data, line.len);
	buf_free(&line);
	return imap_cmd_done(cmd, "OK", "Enabled");
}

bool imap_cmd_starttls(struct imap_cmd *cmd)
{
	struct imap_client *c = cmd->client;
	if (c->server->ssl_ctx == NULL)
		return imap_cmd_done(cmd, "NO", "TLS is not configured");
	if (c->ssl != NULL)
		return imap_cmd_done(cmd, "BAD", "TLS is already active");
	c->starttls_pending = true;
	return imap_cmd_done(cmd, "OK", "Begin TLS negotiation now");
}

struct login_ctx {
	char *user;
	char *tag;  /* AUTHENTICATE continuation: the command's own tag */
};

static void login_ctx_free(void *p)
{
	struct login_ctx *lc = p;
	free(lc->user);
	free(lc->tag);
	free(lc);
}

static void login_defaults_done(void *ctx, const struct repl_result *res)
{
	struct imap_cmd *cmd = ctx;
	struct imap_client *c = cmd->client;
	struct login_ctx *lc = cmd->ctx;
	cmd->waiting = false;
	if (res->error != REPL_OK) {
		log_errorx("imap[%016llx]: %s: cannot create mailboxes of %s: %s",
			   (unsigned long long)c->id, c->peer, lc->user, res->error_msg);
		imap_cmd_done(cmd, "NO", "[UNAVAILABLE] Cannot open the mailboxes, try again later");
		return;
	}
	c->user = lc->user;
	lc->user = NULL;
	c->state = IMAP_STATE_AUTH;
	imap_client_reset_timer(c);
	log_info("imap[%016llx]: login: user=%s from %s%s", (unsigned long long)c->id, c->user,
		 c->peer, imap_client_is_secure(c) ? " TLS" : "");
	struct buf caps = BUF_INIT;
	imap_capabilities(c, &caps);
	imap_cmd_done(cmd, "OK", "[CAPABILITY %s] Logged in", buf_cstr(&caps));
	buf_free(&caps);
}

static void login_checked(void *ctx, int result, const char *error)
{
	struct imap_cmd *cmd = ctx;
	struct imap_client *c = cmd->client;
	struct login_ctx *lc = cmd->ctx;
	if (c->dead) {
		cmd->waiting = false;
		imap_cmd_done(cmd, "NO", "Connection closed");
		return;
	}
	if (result < 0) {
		log_errorx("imap[%016llx]: users file: %s", (unsigned long long)c->id, error);
		cmd->waiting = false;
		imap_cmd_done(cmd, "NO", "[UNAVAILABLE] Authentication is unavailable");
		return;
	}
	if (result == 0) {
		c->logins_failed++;
		log_info("imap[%016llx]: login failed: user=%s from %s", (unsigned long long)c->id,
			 lc->user, c->peer);
		cmd->waiting = false;
		if (c->logins_failed >= IMAP_MAX_LOGIN_FAILURES) {
			imap_client_printf(c, "* BYE Too many failed logins\r\n");
			imap_client_close_after_output(c);
		}
		imap_cmd_done(cmd, "NO", "[AUTHENTICATIONFAILED] Authentication failed");
		return;
	}
	repl_user_ensure_defaults(c->server->repl, lc->user, login_defaults_done, cmd);
}

/* Checks the password on the worker thread and, when it matches, logs in.
 * cmd->ctx must be a struct login_ctx (or NULL). */
static bool do_login(struct imap_cmd *cmd, const char *user, const char *pass)
{
	struct imap_client *c = cmd->client;
	if (!imap_client_plaintext_ok(c))
		return imap_cmd_done(cmd, "NO", "[PRIVACYREQUIRED] Plaintext authentication "
						"is disabled without TLS");
	if (!passwd_user_name_valid(user) || strlen(pass) > PASSWD_MAX_PASSWORD_LEN) {
		c->logins_failed++;
		log_info("imap[%016llx]: login failed: invalid user name from %s",
			 (unsigned long long)c->id, c->peer);
		if (c->logins_failed >= IMAP_MAX_LOGIN_FAILURES) {
			imap_client_printf(c, "* BYE Too many failed logins\r\n");
			imap_client_close_after_output(c);
		}
		return imap_cmd_done(cmd, "NO", "[AUTHENTICATIONFAILED] Authentication failed");
	}
	struct login_ctx *lc = cmd->ctx;
	if (lc == NULL) {
		lc = xcalloc(1, sizeof(*lc));
		cmd->ctx = lc;
		cmd->ctx_free = login_ctx_free;
	}
	lc->user = xstrdup(user);
	/* The cluster's user table is read here, on the loop, at each login:
	 * a user deleted or given a new password on any node is refused as
	 * soon as the change reached this node (SPEC.md 7.5). */
	struct stor_cuser cu;
	const char *serr;
	int cr = stor_cuser_get(c->server->db, user, &cu, &serr);
	if (cr < 0) {
		log_errorx("imap[%016llx]: user table: %s", (unsigned long long)c->id, serr);
		return imap_cmd_done(cmd, "NO", "[UNAVAILABLE] Authentication is unavailable");
	}
	cmd->waiting = true;
	imap_passwd_check(c->server->passwd_worker, c->server->cfg->users_file, user, pass,
			  cr > 0 ? cu.hash : NULL, login_checked, cmd);
	if (cr > 0)
		stor_cuser_free(&cu);
	return false;
}

bool imap_cmd_login(struct imap_cmd *cmd)
{
	if (cmd->count != 2)
		return imap_cmd_done(cmd, "BAD", "LOGIN takes a user name and a password");
	const char *user = imap_arg_cstr(&cmd->args[0]);
	const char *pass = imap_arg_cstr(&cmd->args[1]);
	if (user == NULL || pass == NULL)
		return imap_cmd_done(cmd, "BAD", "Invalid user name or password");
	return do_login(cmd, user, pass);
}

/* Handles a SASL PLAIN response (base64). */
static bool auth_plain(struct imap_cmd *cmd, const char *b64)
{
	size_t len = strlen(b64);
	if (len > 4096)
		return imap_cmd_done(cmd, "BAD", "Authentication data too long");
	unsigned char *raw = xmalloc(len + 1);
	long n = strcmp(b64, "=") == 0 ? 0 : base64_decode(b64, len, raw);
	if (n < 0) {
		free(raw);
		return imap_cmd_done(cmd, "BAD", "Invalid base64");
	}
	raw[n] = '\0';
	/* authzid NUL authcid NUL passwd */
	unsigned char *nul1 = memchr(raw, '\0', (size_t)n);
	unsigned char *nul2 = nul1 != NULL ? memchr(nul1 + 1, '\0', (size_t)(raw + n - nul1 - 1))
					   : NULL;
	if (nul1 == NULL || nul2 == NULL || memchr(nul2 + 1, '\0', (size_t)(raw + n - nul2 - 1))) {
		free(raw);
		return imap_cmd_done(cmd, "NO", "[AUTHENTICATIONFAILED] Invalid PLAIN response");
	}
	const char *authz = (const char *)raw, *user = (const char *)nul1 + 1,
		   *pass = (const char *)nul2 + 1;
	if (*authz != '\0' && strcmp(authz, user) != 0) {
		free(raw);
		return imap_cmd_done(cmd, "NO", "[AUTHORIZATIONFAILED] Proxy login not allowed");
	}
	bool r = do_login(cmd, user, pass);
	explicit_bzero(raw, (size_t)n);
	free(raw);
	return r;
}

bool imap_cmd_authenticate(struct imap_cmd *cmd)
{
	struct imap_client *c = cmd->client;
	if (cmd->count < 1 || cmd->count > 2 || cmd->args[0].type != IMAP_ARG_ATOM)
		return imap_cmd_done(cmd, "BAD", "AUTHENTICATE takes a mechanism");
	if (strcasecmp(cmd->args[0].str, "PLAIN") != 0)
		return imap_cmd_done(cmd, "NO", "Unsupported authentication mechanism");
	if (!imap_client_plaintext_ok(c))
		return imap_cmd_done(cmd, "NO", "[PRIVACYREQUIRED] Plaintext authentication "
						"is disabled without TLS");
	if (cmd->count == 2) {
		const char *ir = imap_arg_cstr(&cmd->args[1]);
		if (ir == NULL)
			return imap_cmd_done(cmd, "BAD", "Invalid initial response");
		return auth_plain(cmd, ir);
	}
	/* Read the response as a raw line (imap_auth_continue). */
	c->auth_tag = xstrdup(cmd->tag);
	imap_client_printf(c, "+ \r\n");
	imap_cmd_detach(cmd);
	return false;
}

void imap_auth_continue(struct imap_client *c, const char *line)
{
	struct imap_cmd *cmd = xcalloc(1, sizeof(*cmd));
	struct login_ctx *lc = xcalloc(1, sizeof(*lc));
	lc->tag = c->auth_tag;
	c->auth_tag = NULL;
	cmd->client = c;
	cmd->tag = lc->tag;
	cmd->name = "AUTHENTICATE";
	cmd->ctx = lc;
	cmd->ctx_free = login_ctx_free;
	c->cmd = cmd;
	if (strcmp(line, "*") == 0) {
		imap_cmd_done(cmd, "BAD", "Authentication aborted");
		return;
	}
	auth_plain(cmd, line);
}
