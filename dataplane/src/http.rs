//! HTTP/1.1 on the shard's own executor: hyper 1.x driven over glommio's streams, no tokio.
//!
//! [`Io`] adapts any futures-io byte stream (a glommio `TcpStream`) to hyper's `rt::Read` and
//! `rt::Write`; hyper's HTTP/1 connections need nothing else (no executor, no timer), so the
//! `/metrics` endpoint and the object-store client both use it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};

/// A futures-io stream seen as hyper's I/O.
pub struct Io<T>(pub T);

impl<T: AsyncRead + Unpin> hyper::rt::Read for Io<T> {
    #[allow(unsafe_code)]
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, mut buf: hyper::rt::ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        // SAFETY: only initialised bytes are written to the cursor, never uninitialised ones.
        let unfilled = unsafe { buf.as_mut() };
        for b in unfilled.iter_mut() {
            b.write(0);
        }
        // SAFETY: every byte of `unfilled` was initialised just above, so viewing it as `[u8]`
        // is sound; `MaybeUninit<u8>` and `u8` have the same layout.
        let bytes = unsafe { &mut *(std::ptr::from_mut::<[std::mem::MaybeUninit<u8>]>(unfilled) as *mut [u8]) };
        let n = match Pin::new(&mut self.0).poll_read(cx, bytes) {
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        // SAFETY: the stream wrote (and we initialised) the first `n` bytes of the cursor.
        unsafe { buf.advance(n) };
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> hyper::rt::Write for Io<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}
