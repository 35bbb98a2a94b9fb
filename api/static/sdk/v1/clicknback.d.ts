// Type declarations for the ClickNBack browser SDK 1.0.0
// (served at /sdk/v1/clicknback.js; the script defines `window.ClickNBack`).

declare namespace ClickNBack {
  /** Where the browser's anonymous id is kept: `"auto"` (default) is
   *  localStorage, else a first-party `cnb_anon` cookie, else memory only;
   *  `"cookie"` forces the cookie; `"memory"` keeps nothing past the page;
   *  or any object with `getItem`/`setItem` (e.g. `sessionStorage`). */
  type StorageOption =
    | "auto"
    | "cookie"
    | "memory"
    | { getItem(key: string): string | null; setItem(key: string, value: string): void };

  interface InitOptions {
    /** The ClickNBack api's origin, e.g. `"https://api.clicknback.example"`. */
    apiUrl: string;
    /** The merchant's publishable key (`pk_...`), sent as `X-Publishable-Key`. */
    publishableKey: string;
    storage?: StorageOption;
    /** `console.warn` when a call fails or gives up. Default false. */
    debug?: boolean;
    /** Attempts per call, the first included. Default 5. */
    maxAttempts?: number;
    /** The first retry waits between half and all of this. Default 500 ms. */
    retryBaseMs?: number;
    /** The longest backoff between two attempts. Default 30000 ms. */
    retryMaxMs?: number;
    /** A request with no answer after this long counts as a network error; 0 disables. Default 10000 ms. */
    timeoutMs?: number;
  }

  /** What every call resolves to; no call rejects. `status` 0: no HTTP answer
   *  (network failure, timeout, not initialised, or, from `init`, with `ok`
   *  true, a page that is no referral landing so nothing was sent). */
  interface Result<T> {
    ok: boolean;
    status: number;
    /** The parsed JSON answer: `T` on success, a `Problem` on an error status. */
    body: T | Problem | null;
  }

  /** An RFC 9457 problem document, the api's error body. */
  interface Problem {
    type: string;
    title: string;
    status: number;
    detail: string;
    /** A stable machine code, e.g. `"validation_failed"`, `"rate_limited"`. */
    code: string;
    request_id: string;
    errors?: { field: string; message: string }[];
  }

  /** `POST /v1/track/click` answers 201 with this. */
  interface Touchpoint {
    touchpoint_id: string;
    /** RFC 3339 UTC. */
    recorded_at: string;
  }

  /** `POST /v1/track/purchase` answers 202 with this. */
  interface PurchaseConfirmation {
    /** `linked`: the purchase had arrived and its token matched; `pending`:
     *  the purchase has not arrived yet (linked when it does, if the token
     *  matches); `mismatch`: the token does not match, nothing is linked. */
    result: "linked" | "pending" | "mismatch";
  }

  interface Purchase {
    /** The merchant's order id, as in its purchase webhook. */
    orderId: string;
    /** The token the merchant's server also sends in the webhook's `purchase_token`. */
    purchaseToken: string;
  }

  const version: string;

  /** Configures the SDK and, on a referral landing (`cnb_offer=<offer id>` or
   *  `cnb=1` in the URL), records the click. Call once per page load. */
  function init(options: InitOptions): Promise<Result<Touchpoint>>;

  /** Links this browser to the signed-in shopper. Resolves with status 204 on success. */
  function identify(accessToken: string): Promise<Result<null>>;

  /** Confirms a purchase from the checkout page. Resolves with status 202 on success. */
  function confirmPurchase(purchase: Purchase): Promise<Result<PurchaseConfirmation>>;

  /** The browser's anonymous id (created and stored on first use). */
  function anonId(): string;

  /** Starts a new anonymous id (e.g. when a shopper logs out on a shared device) and returns it. */
  function reset(): string;
}

interface Window {
  ClickNBack: typeof ClickNBack;
}
