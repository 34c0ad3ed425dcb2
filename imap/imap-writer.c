/* Big outputs written to the socket by a thread of their own.
 *
 * A FETCH of many bodies spends about half of the event loop's CPU in
 * sendmsg(): the copy into the socket and TCP's work for it (on loopback
 * also the receiving side's).  The loop is one thread, so it uses one
 * core at a time: in a FETCH benchmark with 8 clients on a shared 2-core
 * machine it was runnable but waiting for a CPU about half the time.  So
 * once a plain
 * connection has at least IMAP_WRITER_MIN bytes queued, client_flush()
 * hands the whole queue (out's bytes and the texts' pieces, in stream
 * order) to this thread as one unit and starts a new, empty queue; the
 * writer sends it without blocking (its own epoll for sockets that are
 * full), then gives it back through a queue and an ev_async.  On the loop
 * the finished unit is freed (pieces are released there: their mappings'
 * reference counts are the loop's) and the connection goes on.
 *
 * While a unit is out, nothing else of that connection is written: later
 * output waits in the new queue, so the stream keeps its order, and the
 * socket is not closed (imap_client_destroy shuts it down, which ends the
 * writer's sending at once, and closes it when the unit comes back).  The
 * writer touches nothing but its units. */
#include "imap/imap-private.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "lib/log.h"
#include "lib/xalloc.h"

struct imap_send {
	struct imap_client *c; /* the loop's */
	int fd;
	struct buf out;
	ARRAY(struct imap_out_piece) pieces;
	size_t pieces_next;
	uint64_t pieces_bytes, out_sent;
	int error;             /* errno of a failed send, 0 */
	bool polling;          /* fd is in the writer's epoll */
	struct imap_send *next;              /* in todo or finished */
	struct imap_send *prev_held, *next_held; /* the writer's own list */
};

struct imap_writer {
	struct ev_loop *loop;
	ev_async async;
	pthread_t thread;
	int epfd, wake_fd;
	pthread_mutex_t mu;
	/* Under mu: */
	struct imap_send *todo, *finished;
	bool quit;
	/* The writer thread's alone: the units it holds (sending or waiting
	 * for room). */
	struct imap_send *held;
};

int imap_stream_send(int fd, struct imap_stream *s, bool release)
{
	for (int rounds = 0; rounds < 16 && buf_avail(s->out) + *s->pieces_bytes > 0; rounds++) {
		struct iovec iov[16];
		int n = 0;
		size_t total = 0, taken = 0;
		size_t k = *s->pieces_next;
		while (n < 16 && total < 1048576) {
			/* out's bytes before piece k (all of them after the last) */
			size_t upto = buf_avail(s->out);
			if (k < *s->pieces_count)
				upto = (size_t)(s->pieces[k].at - *s->out_sent);
			if (upto > taken) {
				iov[n].iov_base = (void *)(buf_rptr(s->out) + taken);
				iov[n].iov_len = upto - taken;
				total += upto - taken;
				taken = upto;
				n++;
				continue;
			}
			if (k >= *s->pieces_count)
				break;
			const struct imap_out_piece *op = &s->pieces[k++];
			iov[n].iov_base = (void *)(op->p.data + op->sent);
			iov[n].iov_len = op->p.len - op->sent;
			total += iov[n].iov_len;
			n++;
		}
		struct msghdr msg;
		memset(&msg, 0, sizeof(msg));
		msg.msg_iov = iov;
		msg.msg_iovlen = (size_t)n;
		ssize_t sent = sendmsg(fd, &msg, MSG_NOSIGNAL);
		if (sent < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
				return 1;
			return -1;
		}
		/* Take what went out off the front, in the same order. */
		size_t left = (size_t)sent;
		while (left > 0) {
			size_t upto = buf_avail(s->out);
			struct imap_out_piece *op = NULL;
			if (*s->pieces_next < *s->pieces_count) {
				op = &s->pieces[*s->pieces_next];
				upto = (size_t)(op->at - *s->out_sent);
			}
			if (upto > 0) {
				size_t m = upto < left ? upto : left;
				buf_consume(s->out, m);
				*s->out_sent += m;
				left -= m;
				continue;
			}
			if (op == NULL)
				break; /* cannot be: sent <= what was offered */
			size_t m = op->p.len - op->sent < left ? op->p.len - op->sent : left;
			op->sent += m;
			*s->pieces_bytes -= m;
			left -= m;
			if (op->sent == op->p.len) {
				++*s->pieces_next;
				if (release) {
					stor_text_piece_release(&op->p);
					if (*s->pieces_next == *s->pieces_count) {
						*s->pieces_count = 0;
						*s->pieces_next = 0;
					}
				}
			}
		}
		if ((size_t)sent < total)
			return 1;
	}
	return buf_avail(s->out) + *s->pieces_bytes > 0 ? 1 : 0;
}

static void unit_stream(struct imap_send *u, struct imap_stream *s)
{
	s->out = &u->out;
	s->pieces = u->pieces.items;
	s->pieces_count = &u->pieces.count;
	s->pieces_next = &u->pieces_next;
	s->pieces_bytes = &u->pieces_bytes;
	s->out_sent = &u->out_sent;
}

static void writer_finish(struct imap_writer *w, struct imap_send *u)
{
	if (u->prev_held != NULL)
		u->prev_held->next_held = u->next_held;
	else
		w->held = u->next_held;
	if (u->next_held != NULL)
		u->next_held->prev_held = u->prev_held;
	u->prev_held = u->next_held = NULL;
	if (u->polling)
		(void)epoll_ctl(w->epfd, EPOLL_CTL_DEL, u->fd, NULL);
	u->polling = false;
	pthread_mutex_lock(&w->mu);
	u->next = w->finished;
	w->finished = u;
	pthread_mutex_unlock(&w->mu);
	ev_async_send(w->loop, &w->async);
}

/* Sends what the socket takes; the unit goes back when all is sent or the
 * send failed, or waits in the epoll for room. */
static void writer_push(struct imap_writer *w, struct imap_send *u)
{
	struct imap_stream s;
	unit_stream(u, &s);
	int r = imap_stream_send(u->fd, &s, false);
	if (r < 0)
		u->error = errno != 0 ? errno : EIO;
	if (r <= 0) {
		writer_finish(w, u);
		return;
	}
	struct epoll_event ev = { .events = EPOLLOUT | EPOLLONESHOT, .data.ptr = u };
	if (epoll_ctl(w->epfd, u->polling ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, u->fd, &ev) < 0) {
		u->error = errno;
		writer_finish(w, u);
		return;
	}
	u->polling = true;
}

static void *writer_main(void *arg)
{
	struct imap_writer *w = arg;
	for (;;) {
		struct epoll_event ev[32];
		int n = epoll_wait(w->epfd, ev, 32, -1);
		bool broken = n < 0 && errno != EINTR;
		for (int i = 0; i < n; i++) {
			if (ev[i].data.ptr == NULL) {
				uint64_t v;
				if (read(w->wake_fd, &v, sizeof(v)) < 0) {
					/* EAGAIN: woken already */
				}
				continue;
			}
			writer_push(w, ev[i].data.ptr);
		}
		pthread_mutex_lock(&w->mu);
		struct imap_send *todo = w->todo;
		w->todo = NULL;
		bool quit = w->quit || broken;
		pthread_mutex_unlock(&w->mu);
		/* In the order they came (the list is newest first). */
		struct imap_send *rev = NULL;
		while (todo != NULL) {
			struct imap_send *u = todo;
			todo = u->next;
			u->next = rev;
			rev = u;
		}
		while (rev != NULL) {
			struct imap_send *u = rev;
			rev = u->next;
			u->next = NULL;
			u->next_held = w->held;
			if (w->held != NULL)
				w->held->prev_held = u;
			w->held = u;
			writer_push(w, u);
		}
		if (quit) {
			/* What is still held comes back unsent. */
			while (w->held != NULL) {
				w->held->error = ECANCELED;
				writer_finish(w, w->held);
			}
			break;
		}
	}
	return NULL;
}

/* On the loop: the units that came back. */
static void async_cb(struct ev_loop *loop, ev_async *a, int revents)
{
	struct imap_writer *w = a->data;
	pthread_mutex_lock(&w->mu);
	struct imap_send *done = w->finished;
	w->finished = NULL;
	pthread_mutex_unlock(&w->mu);
	while (done != NULL) {
		struct imap_send *u = done;
		done = u->next;
		for (size_t i = 0; i < u->pieces.count; i++)
			stor_text_piece_release(&u->pieces.items[i].p);
		ARRAY_FREE(&u->pieces);
		buf_free(&u->out);
		struct imap_client *c = u->c;
		int fd = u->fd, error = u->error;
		free(u);
		imap_client_sent(c, fd, error);
	}
}

struct imap_writer *imap_writer_create(struct ev_loop *loop)
{
	struct imap_writer *w = xcalloc(1, sizeof(*w));
	w->loop = loop;
	w->epfd = epoll_create1(EPOLL_CLOEXEC);
	w->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
	if (w->epfd < 0 || w->wake_fd < 0 ||
	    epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->wake_fd, &ev) < 0)
		goto fail;
	pthread_mutex_init(&w->mu, NULL);
	ev_async_init(&w->async, async_cb);
	w->async.data = w;
	ev_async_start(loop, &w->async);
	if (pthread_create(&w->thread, NULL, writer_main, w) != 0) {
		ev_async_stop(loop, &w->async);
		pthread_mutex_destroy(&w->mu);
		goto fail;
	}
	return w;
fail:
	log_info("imap: no writer thread (%s): connections write from the loop",
		 strerror(errno));
	if (w->epfd >= 0)
		close(w->epfd);
	if (w->wake_fd >= 0)
		close(w->wake_fd);
	free(w);
	return NULL;
}

static void wake(struct imap_writer *w)
{
	uint64_t one = 1;
	if (write(w->wake_fd, &one, sizeof(one)) < 0) {
		/* EAGAIN: the counter is full, the writer is awake anyway */
	}
}

void imap_writer_destroy(struct imap_writer **wp)
{
	struct imap_writer *w = *wp;
	if (w == NULL)
		return;
	*wp = NULL;
	pthread_mutex_lock(&w->mu);
	w->quit = true;
	pthread_mutex_unlock(&w->mu);
	wake(w);
	pthread_join(w->thread, NULL);
	async_cb(w->loop, &w->async, 0);
	ev_async_stop(w->loop, &w->async);
	pthread_mutex_destroy(&w->mu);
	close(w->epfd);
	close(w->wake_fd);
	free(w);
}

bool imap_writer_take(struct imap_writer *w, struct imap_client *c)
{
	if (w == NULL || c->sending || c->ssl != NULL || c->tls_handshake ||
	    c->starttls_pending || c->dead ||
	    buf_avail(&c->out) + (size_t)c->pieces_bytes < IMAP_WRITER_MIN)
		return false;
	struct imap_send *u = xcalloc(1, sizeof(*u));
	u->c = c;
	u->fd = c->fd;
	u->out = c->out;
	buf_init(&c->out);
	u->pieces.items = c->pieces.items;
	u->pieces.count = c->pieces.count;
	u->pieces.cap = c->pieces.cap;
	memset(&c->pieces, 0, sizeof(c->pieces));
	u->pieces_next = c->pieces_next;
	u->pieces_bytes = c->pieces_bytes;
	u->out_sent = c->out_sent;
	c->sending = true;
	/* The new queue starts where this unit ends in the stream. */
	c->out_sent += buf_avail(&u->out);
	c->pieces_next = 0;
	c->pieces_bytes = 0;
	pthread_mutex_lock(&w->mu);
	u->next = w->todo;
	w->todo = u;
	pthread_mutex_unlock(&w->mu);
	wake(w);
	return true;
}
