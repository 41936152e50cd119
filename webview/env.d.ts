// CSS imports are bundled by esbuild (webview/build.mjs) into dist/webview/<view>.css.
declare module '*.css';
