// The JSON API of the process that served this page, called with the token the user
// typed in (kept in sessionStorage: this tab only, gone when it closes).

const TOKEN_KEY = "syncline.token";
const BASE = new URL("../api/v1", document.baseURI).pathname; // works behind a path prefix

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status; // 0: the API could not be reached
  }
}

export const token = {
  get() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  set(value) {
    sessionStorage.setItem(TOKEN_KEY, value);
  },
  clear() {
    sessionStorage.removeItem(TOKEN_KEY);
  },
};

export async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  const t = token.get();
  if (t) headers.Authorization = `Bearer ${t}`;
  const init = { method, headers, cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(BASE + path, init);
  } catch (err) {
    throw new ApiError(0, `cannot reach the syncline API (${err.message})`);
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message = data && typeof data.error === "string" ? data.error : response.statusText;
    throw new ApiError(response.status, message || `HTTP ${response.status}`);
  }
  return data;
}

export function pipelinePath(name, rest = "") {
  return `/pipelines/${encodeURIComponent(name)}${rest}`;
}
