"""The PDS's public page (``/``): who runs the server, its rules, and how to join.

The join form is ``com.atproto.server.createAccount`` in HTML: it runs the
same handler a client's call does (handle rules, invite codes, application
answers, the did:plc creation), so "application" mode creates a pending
account that waits for an admin. Input that the handler refuses comes back
on the same form with the reason, everything but the password kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pds.api import server
from pds.web.calls import call, public_message
from pds.web.site import JOIN_LIMIT, WebState
from roost.auth import UNAUTHENTICATED
from roost.errors import RateLimitExceeded, RoostError
from roost.web import CsrfFailed, CsrfToken, Form, Markup, join, read_form, redirect, render

__all__ = ["routes"]


@dataclass(slots=True)
class JoinInput:
    """What a visitor typed into the join form."""

    handle: str = ""
    email: str = ""
    password: str = field(default="", repr=False)
    invite_code: str = ""
    answers: list[str] = field(default_factory=list)
    accepted: bool = False

    @classmethod
    def from_form(cls, form: Form, questions: int) -> JoinInput:
        return cls(
            handle=form.get("handle").strip(),
            email=form.get("email").strip(),
            password=form.get("password"),
            invite_code=form.get("invite_code").strip(),
            answers=[form.get(f"answer_{i}") for i in range(1, questions + 1)],
            accepted=form.get("accept_rules") == "yes",
        )

    def full_handle(self, domain: str) -> str:
        """``alice`` or ``@alice.example.com`` as the handle under ``domain``."""
        handle = self.handle.lstrip("@").lower()
        return handle if handle.endswith(domain) else handle + domain


def _http_link(url: str | None, label: str) -> Markup | None:
    if not url or not url.startswith(("https://", "http://")):
        return None
    return render('<a href="$u" rel="noopener">$l</a>', u=url, l=label)


def _paragraphs(text: str | None) -> Markup:
    if not text:
        return Markup("")
    blocks = [b.strip() for b in text.split("\n\n") if b.strip()]
    return join(render('<p class="lead">$t</p>', t=b) for b in blocks)


def _join_form(state: WebState, csrf: CsrfToken, entered: JoinInput) -> Markup:
    config = state.config
    invite: Markup | str = ""
    if config.signup_mode == "invite":
        invite = render(
            '<label for="invite_code">Invite code</label>'
            '<input id="invite_code" name="invite_code" type="text" value="$v" required'
            ' maxlength="100" autocapitalize="none" spellcheck="false">',
            v=entered.invite_code,
        )
    questions: Markup | str = ""
    if config.signup_mode == "application":
        fields = []
        for i, question in enumerate(config.application_questions, start=1):
            answer = entered.answers[i - 1] if i <= len(entered.answers) else ""
            fields.append(render(
                '<label for="answer_$i">$q</label>'
                '<textarea id="answer_$i" name="answer_$i" required maxlength="$max">$a</textarea>',
                i=i, q=question, a=answer, max=server.MAX_APPLICATION_CHARS,
            ))
        questions = join(fields)
    handle = entered.handle.lstrip("@")
    if handle.lower().endswith(config.handle_domain):
        handle = handle[: -len(config.handle_domain)]
    submit = {"application": "Send my application", "invite": "Join"}.get(
        config.signup_mode, "Create my account"
    )
    return state.templates.render(
        "join_form.html",
        csrf=csrf.field(),
        handle=handle,
        domain=config.handle_domain,
        min=server.MIN_HANDLE_LABEL,
        max=server.MAX_HANDLE_LABEL,
        email=entered.email,
        invite=invite,
        questions=questions,
        accepted=Markup(" checked" if entered.accepted else ""),
        submit=submit,
    )


_JOIN_TEXT = {
    "application": (
        "Apply to join",
        (
            "Every application is read by the operator. Answer the questions below: your "
            "account is created now and switched on once an admin approves it."
        ),
    ),
    "invite": (
        "Join with an invite code",
        "You need an invite code from the operator or a member.",
    ),
    "open": ("Create an account", "Anyone may join. Pick a handle and a password."),
}


def _home(
    state: WebState,
    csrf: CsrfToken,
    entered: JoinInput,
    *,
    error: str | None = None,
    status: int = 200,
) -> Response:
    config = state.config
    if config.rules:
        items = join(render("<li>$r</li>", r=rule) for rule in config.rules)
        rules = render("<ol>$items</ol>", items=items)
    else:
        rules = render("<p>$t</p>", t="The operator has not listed rules here. Be kind.")
    links: Sequence[Markup] = [
        link for link in (
            _http_link(config.rules_url, "Full rules"),
            _http_link(config.terms_url, "Terms of service"),
            _http_link(config.privacy_url, "Privacy policy"),
        ) if link is not None
    ]
    title, intro = _JOIN_TEXT[config.signup_mode]
    if config.contact_email:
        contact = render('<p>Write to the operator at <a href="mailto:$e">$e</a>.</p>',
                         e=config.contact_email)
    else:
        contact = render("<p>$t</p>", t="The operator has not published a contact address.")
    body = state.templates.render(
        "home.html",
        name=state.site_name,
        description=_paragraphs(config.server_description),
        domain=config.handle_domain,
        url=config.url,
        rules=rules,
        links=render('<p class="small">$l</p>', l=join(links, " · ")) if links else "",
        join_title=title,
        join_intro=render('<p class="muted">$t</p>', t=intro),
        join_error=render('<p class="msg bad" role="alert">$m</p>', m=error) if error else "",
        form=_join_form(state, csrf, entered),
        contact=contact,
    )
    return state.public_page(state.site_name, body, csrf=csrf, status=status)


def routes(state: WebState) -> list[Route]:
    config = state.config

    async def home(request: Request) -> Response:
        return _home(state, state.csrf.token(request), JoinInput())

    async def join_post(request: Request) -> Response:
        try:
            form = await read_form(request)
        except RoostError as exc:
            return state.error_page(exc)
        csrf = state.csrf.token(request)
        entered = JoinInput.from_form(form, len(config.application_questions))

        def again(message: str, status: int) -> Response:
            return _home(state, csrf, entered, error=message, status=status)

        try:
            state.csrf.check(request, form)
        except CsrfFailed as exc:
            return again(exc.message, exc.status)
        wait = state.allowed(request, JOIN_LIMIT)
        if wait is not None:
            limited = RateLimitExceeded(
                f"Too many sign-ups from your address: try again in {wait // 60 + 1} minutes."
            )
            return again(limited.message, limited.status)
        if not entered.accepted:
            return again("Please read the rules and tick the box to accept them.", 400)
        if not entered.handle:
            return again("Please choose a handle.", 400)
        if not entered.password:
            return again("Please choose a password.", 400)
        handle = entered.full_handle(config.handle_domain)
        body: dict[str, object] = {"handle": handle, "password": entered.password}
        if entered.email:
            body["email"] = entered.email
        if config.signup_mode == "invite":
            body["inviteCode"] = entered.invite_code
        if config.signup_mode == "application":
            body["roostApplication"] = {"answers": entered.answers}
        try:
            out = await call(request, server.create_account, "com.atproto.server.createAccount",
                             auth=UNAUTHENTICATED, body=body)
        except RoostError as exc:
            return again(public_message(exc), exc.status)
        pending = out.get("roostStatus") == "pending"
        if pending:
            title = "Application received"
            message = render(
                "<p>Thank you. Your account <b>$h</b> now waits for the operator to read your "
                "answers. Once it is approved, sign in from any AT Protocol app (such as Bluesky) "
                "with the server address below. If it is refused, signing in tells you why.</p>",
                h=out["handle"],
            )
        else:
            title = "Welcome!"
            message = render(
                "<p>Your account <b>$h</b> is ready. Sign in from any AT Protocol app (such as "
                "Bluesky): choose a custom hosting provider and enter the server address below."
                "</p>",
                h=out["handle"],
            )
        page_body = state.templates.render(
            "joined.html", title=title, message=message, handle=out["handle"], url=config.url,
            name=state.site_name,
        )
        return state.public_page(title, page_body)

    async def join_get(request: Request) -> Response:
        return redirect("/#join")

    return [
        Route("/", home, methods=["GET", "HEAD"]),
        Route("/join", join_post, methods=["POST"]),
        Route("/join", join_get, methods=["GET", "HEAD"]),
    ]
