// The page's HTTP side: the stored access token, JSON requests, PostgREST-style RPCs, sign-in.

const TOKEN_KEY = "velocity.accessToken";

/** A reply that is not 2xx: `status`, the body's `code` and `message`, and its facts. */
export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `the service answered HTTP ${status}`);
    this.status = status;
    this.code = (body && body.code) || null;
    this.body = body || {};
    this.details = parseDetails(this.body.details);
  }
}

/** The request never got an answer (offline, the service down). Safe to retry. */
export class NetworkError extends Error {}

function parseDetails(details) {
  if (typeof details !== "string") return {};
  try {
    const parsed = JSON.parse(details);
    return parsed && typeof parsed === "object" ? parsed : {};
  } catch {
    return {};
  }
}

export function storedToken() {
  return localStorage.getItem(TOKEN_KEY);
}

export function storeToken(token) {
  localStorage.setItem(TOKEN_KEY, token);
}

export function forgetToken() {
  localStorage.removeItem(TOKEN_KEY);
}

/** The token's claims, unverified (the service verifies it; the page only reads `sub`). */
export function tokenClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
  } catch {
    return {};
  }
}

export async function request(method, path, body, { keepalive = false } = {}) {
  const headers = { Accept: "application/json" };
  const token = storedToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      keepalive,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    throw new NetworkError(`cannot reach the service (${error.message})`);
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { message: text };
    }
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

/** `supabase.rpc(name, args)` without supabase-js: POST /rest/v1/rpc/{name}. */
export function rpc(name, args) {
  return request("POST", `/rest/v1/rpc/${name}`, args);
}

export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

/**
 * The signed-in user ({userId, email}), asking for a token (or a dev login, where the
 * service offers one) until the service accepts it.
 */
export async function signIn(container) {
  if (storedToken()) {
    try {
      return await request("GET", "/play/api/me");
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 401) throw error;
      forgetToken();
    }
  }
  const config = await request("GET", "/play/api/config");
  return new Promise((resolve) => {
    const problem = el("p", { class: "problem", role: "alert", id: "signin-problem" });
    const tokenInput = el("input", {
      id: "signin-token", name: "token", autocomplete: "off", required: true,
      placeholder: "eyJhbGciOiJIUzI1NiIs…",
    });
    const tokenForm = el("form", { class: "signin", id: "signin-token-form" },
      el("label", { for: "signin-token", text: "Access token (a Supabase-style user JWT)" }),
      tokenInput, el("button", { type: "submit", text: "Sign in" }));
    const forms = [tokenForm];
    tokenForm.addEventListener("submit", async (submitted) => {
      submitted.preventDefault();
      await accept(tokenInput.value.trim());
    });
    if (config.devLogin) {
      const emailInput = el("input", {
        id: "signin-email", type: "email", name: "email", required: true,
        placeholder: "you@example.test",
      });
      const devForm = el("form", { class: "signin", id: "signin-dev-form" },
        el("label", { for: "signin-email", text: "Dev login (embedded stack only): your email" }),
        emailInput, el("button", { type: "submit", text: "Sign in" }));
      devForm.addEventListener("submit", async (submitted) => {
        submitted.preventDefault();
        try {
          const reply = await request("POST", "/play/api/dev-login",
            { email: emailInput.value.trim() });
          await accept(reply.accessToken);
        } catch (error) {
          problem.textContent = error.message;
        }
      });
      forms.unshift(devForm);
    }
    container.replaceChildren(el("section", { class: "card signin-card" },
      el("h2", { text: "Sign in" }), ...forms, problem));

    async function accept(token) {
      storeToken(token);
      try {
        resolve(await request("GET", "/play/api/me"));
      } catch (error) {
        forgetToken();
        problem.textContent = `That token was refused: ${error.message}`;
      }
    }
  });
}
