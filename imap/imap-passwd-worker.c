/* Password checks off the event loop.
 *
 * passwd_verify() reads the users file and runs a deliberately slow hash
 * (SHA512-CRYPT: thousands of rounds; BLF-CRYPT: far more).  Run on the loop
 * it would stall every session for each login, so one worker thread does
 * it: jobs go in through a mutex-protected queue, results come back through
 * a second queue and an ev_async that wakes the loop, where the callbacks
 * run.  The worker touches nothing but the job it holds and its cache of
 * successful verifications (lib/passwd-cache.h), which only it uses: a
 * client that logs in again with the same password skips the slow hash. */
#include "imap/imap-private.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "lib/passwd.h"
#include "lib/passwd-cache.h"
#include "lib/xalloc.h"

struct imap_passwd_job {
	struct imap_passwd_job *next;
	char *path, *user, *password;
	char *other_hash; /* the cluster's record, checked when the file lacks the user */
	int result;
	char *error;
	imap_passwd_cb *cb;
	void *ctx;
};

struct imap_passwd_worker {
	struct ev_loop *loop;
	ev_async async;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t wake;
	struct imap_passwd_job *todo_head, **todo_tail;
	struct imap_passwd_job *done_head, **done_tail;
	bool stop;
	struct passwd_cache *cache; /* the worker thread's alone */
};

/* 4096 users logging in again and again skip the hash; an entry is 44
 * bytes, a bucket 4. */
#define IMAP_PASSWD_CACHE_ENTRIES 4096

static void job_free(struct imap_passwd_job *job)
{
	explicit_bzero(job->password, strlen(job->password));
	free(job->password);
	free(job->user);
	free(job->path);
	free(job->other_hash);
	free(job->error);
	free(job);
}

static void *worker_main(void *arg)
{
	struct imap_passwd_worker *w = arg;
	pthread_mutex_lock(&w->lock);
	for (;;) {
		while (!w->stop && w->todo_head == NULL)
			pthread_cond_wait(&w->wake, &w->lock);
		if (w->stop)
			break;
		struct imap_passwd_job *job = w->todo_head;
		w->todo_head = job->next;
		if (w->todo_head == NULL)
			w->todo_tail = &w->todo_head;
		pthread_mutex_unlock(&w->lock);

		job->result = passwd_verify_cached(w->cache, job->path, job->user, job->password,
						   job->other_hash, &job->error);

		pthread_mutex_lock(&w->lock);
		job->next = NULL;
		*w->done_tail = job;
		w->done_tail = &job->next;
		ev_async_send(w->loop, &w->async);
	}
	pthread_mutex_unlock(&w->lock);
	return NULL;
}

static void async_cb(struct ev_loop *loop, ev_async *a, int revents)
{
	struct imap_passwd_worker *w = a->data;
	pthread_mutex_lock(&w->lock);
	struct imap_passwd_job *list = w->done_head;
	w->done_head = NULL;
	w->done_tail = &w->done_head;
	pthread_mutex_unlock(&w->lock);
	while (list != NULL) {
		struct imap_passwd_job *next = list->next;
		list->cb(list->ctx, list->result, list->error);
		job_free(list);
		list = next;
	}
}

struct imap_passwd_worker *imap_passwd_worker_create(struct ev_loop *loop)
{
	struct imap_passwd_worker *w = xcalloc(1, sizeof(*w));
	w->loop = loop;
	w->todo_tail = &w->todo_head;
	w->done_tail = &w->done_head;
	w->cache = passwd_cache_create(IMAP_PASSWD_CACHE_ENTRIES);
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->wake, NULL);
	ev_async_init(&w->async, async_cb);
	w->async.data = w;
	ev_async_start(loop, &w->async);
	/* An idle worker must not keep ev_run() alive by itself. */
	ev_unref(loop);
	if (pthread_create(&w->thread, NULL, worker_main, w) != 0)
		fatalx("cannot start the password worker thread");
	return w;
}

void imap_passwd_worker_destroy(struct imap_passwd_worker **wp)
{
	struct imap_passwd_worker *w = *wp;
	if (w == NULL)
		return;
	*wp = NULL;
	pthread_mutex_lock(&w->lock);
	w->stop = true;
	pthread_cond_signal(&w->wake);
	pthread_mutex_unlock(&w->lock);
	pthread_join(w->thread, NULL);
	/* Callbacks are not run: their sessions are being torn down too. */
	struct imap_passwd_job *lists[2] = { w->todo_head, w->done_head };
	for (int i = 0; i < 2; i++) {
		while (lists[i] != NULL) {
			struct imap_passwd_job *next = lists[i]->next;
			job_free(lists[i]);
			lists[i] = next;
		}
	}
	passwd_cache_free(&w->cache);
	ev_ref(w->loop);
	ev_async_stop(w->loop, &w->async);
	pthread_cond_destroy(&w->wake);
	pthread_mutex_destroy(&w->lock);
	free(w);
}

void imap_passwd_check(struct imap_passwd_worker *w, const char *path, const char *user,
		       const char *password, const char *other_hash, imap_passwd_cb *cb, void *ctx)
{
	struct imap_passwd_job *job = xcalloc(1, sizeof(*job));
	job->path = path != NULL ? xstrdup(path) : NULL;
	job->other_hash = other_hash != NULL ? xstrdup(other_hash) : NULL;
	job->user = xstrdup(user);
	job->password = xstrdup(password);
	job->cb = cb;
	job->ctx = ctx;
	pthread_mutex_lock(&w->lock);
	*w->todo_tail = job;
	w->todo_tail = &job->next;
	pthread_cond_signal(&w->wake);
	pthread_mutex_unlock(&w->lock);
}
