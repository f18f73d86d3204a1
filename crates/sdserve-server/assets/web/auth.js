// Credentials for a server started with --api-key or --api-auth: asked once
// in a dialog when the API answers 401, kept in sessionStorage (this tab,
// until it closes), sent as `Authorization` on every request.

const KEY = "sdserve.auth";

/** The Authorization header value for this session, or null. */
export function authorization() {
  return sessionStorage.getItem(KEY);
}

/** Drops the session's credentials (the server refused them). */
export function forgetCredentials() {
  sessionStorage.removeItem(KEY);
}

let pending = null;

/**
 * Shows the sign-in dialog; resolves once credentials are stored, rejects when
 * the person cancels. Concurrent 401s share one dialog.
 */
export function askCredentials({ basic, refused }) {
  if (!pending) {
    pending = showDialog(basic, refused).finally(() => {
      pending = null;
    });
  }
  return pending;
}

function showDialog(basic, refused) {
  const dialog = document.getElementById("auth-dialog");
  const form = dialog.querySelector("form");
  const key = dialog.querySelector("#auth-key");
  const user = dialog.querySelector("#auth-user");
  const password = dialog.querySelector("#auth-password");
  const message = dialog.querySelector("#auth-message");
  message.textContent = refused
    ? "Those credentials were refused. Try again."
    : basic
      ? "This server wants a user name and password, or an API key."
      : "This server wants an API key.";
  dialog.querySelector("#auth-basic").hidden = !basic;
  key.value = "";
  password.value = "";
  return new Promise((resolve, reject) => {
    const done = (event) => {
      event.preventDefault();
      let value = null;
      if (basic && user.value) {
        const pair = new TextEncoder().encode(`${user.value}:${password.value}`);
        value = `Basic ${btoa(String.fromCharCode(...pair))}`;
      } else if (key.value.trim()) {
        value = `Bearer ${key.value.trim()}`;
      }
      if (!value) {
        message.textContent = "Enter an API key, or a user name and password.";
        return;
      }
      sessionStorage.setItem(KEY, value);
      cleanup();
      dialog.close();
      resolve();
    };
    const cancelled = () => {
      cleanup();
      reject(new Error("Sign-in was cancelled; the server needs credentials."));
    };
    const cleanup = () => {
      form.removeEventListener("submit", done);
      cancelButton.removeEventListener("click", cancel);
      dialog.removeEventListener("close", cancelled);
    };
    const cancelButton = dialog.querySelector("#auth-cancel");
    const cancel = () => dialog.close();
    form.addEventListener("submit", done);
    cancelButton.addEventListener("click", cancel, { once: true });
    dialog.addEventListener("close", cancelled, { once: true });
    dialog.showModal();
    (basic ? user : key).focus();
  });
}
