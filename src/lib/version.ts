/** berth's version: `berth --version`, `berth status` and `GET /v1/status`. */
export const VERSION = '0.1.0';
