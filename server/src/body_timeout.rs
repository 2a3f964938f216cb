//! A deadline on reading request bodies (issue 22, finding 6): a client that sends its body a
//! byte a second held a connection, a worker's attention and a buffer for as long as it liked.
//!
//! actix bounds the time to read a request's head (`client_request_timeout`, 5 s) but not its
//! body. Here every body must have arrived by `grace + received / min_rate` seconds after the
//! handler began to read it (a handler that first waits for its turn, as a sync does, does not
//! use up the client's time): a 2G phone's 8 MiB sync (10 KB/s) is far inside it, a trickle is
//! cut off after `grace`. The request then gets 408 `request_timeout` and the connection is
//! closed (its body was not read to the end).

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use actix_web::{HttpMessage, ResponseError};
use futures_util::Stream;
use tokio::time::{Instant, Sleep};

use crate::error::{ApiError, Kind};

/// The deadline's settings (app data).
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline {
    pub grace: Duration,
    /// Bytes per second.
    pub min_rate: u64,
}

struct Deadline {
    inner: Payload,
    /// When the handler first asked for the body, and the timer from then: a handler that
    /// waits for its turn first (a sync's admission) does not use up the client's time.
    started: Option<(Instant, Pin<Box<Sleep>>)>,
    received: u64,
    settings: BodyDeadline,
    expired: Rc<Cell<bool>>,
}

impl Deadline {
    fn due(&self, start: Instant) -> Instant {
        let allowed = self.received as f64 / self.settings.min_rate.max(1) as f64;
        start + self.settings.grace + Duration::from_secs_f64(allowed)
    }
}

impl Stream for Deadline {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let start = match &this.started {
            Some((start, _)) => *start,
            None => {
                let now = Instant::now();
                let timer = Box::pin(tokio::time::sleep_until(now + this.settings.grace));
                this.started = Some((now, timer));
                now
            }
        };
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(bytes))) => {
                this.received += bytes.len() as u64;
                let due = this.due(start);
                if let Some((_, timer)) = &mut this.started {
                    timer.as_mut().reset(due);
                }
                Poll::Ready(Some(Ok(bytes)))
            }
            Poll::Ready(other) => Poll::Ready(other),
            Poll::Pending => {
                let Some((_, timer)) = &mut this.started else {
                    return Poll::Pending;
                };
                if timer.as_mut().poll(cx).is_ready() {
                    this.expired.set(true);
                    return Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the request body arrived too slowly",
                    )))));
                }
                Poll::Pending
            }
        }
    }
}

/// The middleware: wraps the body in a [`Deadline`], and answers 408 when it expired.
pub async fn enforce(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let Some(settings) = req.app_data::<BodyDeadline>().copied() else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    let expired = Rc::new(Cell::new(false));
    let stream = Deadline {
        inner: req.take_payload(),
        started: None,
        received: 0,
        settings,
        expired: expired.clone(),
    };
    let boxed: Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>> = Box::pin(stream);
    req.set_payload(Payload::from(boxed));
    let res = next.call(req).await?;
    if !expired.get() {
        return Ok(res.map_into_left_body());
    }
    tracing::warn!(
        target: "security",
        path = res.request().path(),
        client = ?res.request().peer_addr(),
        "request body too slow: 408"
    );
    let error = ApiError::new(
        Kind::RequestTimeout,
        "request_timeout",
        "the request body arrived too slowly; send it again",
    );
    let mut response = error.error_response();
    response
        .head_mut()
        .set_connection_type(actix_web::http::ConnectionType::Close);
    let (req, _) = res.into_parts();
    Ok(ServiceResponse::new(req, response).map_into_right_body())
}
