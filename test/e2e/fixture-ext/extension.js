// Throwaway fixture for the e2e infrastructure: one command that shows an information message
// and opens a webview. Plain JS so it needs no build step.
'use strict';
const vscode = require('vscode');

function activate(context) {
  context.subscriptions.push(
    vscode.commands.registerCommand('trenvFixture.hello', () => {
      // Not awaited: the promise only settles when the user dismisses the message.
      void vscode.window.showInformationMessage('Hello from the trenv fixture');
      const panel = vscode.window.createWebviewPanel('trenvFixture.webview', 'Fixture Webview', vscode.ViewColumn.One, {});
      panel.webview.html = `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>fixture</title></head>
<body><h1 id="greeting">Fixture webview says hi</h1><p id="count">${vscode.workspace.workspaceFolders?.length ?? 0} workspace folder(s)</p></body></html>`;
      return 'hello-done';
    }),
  );
}

function deactivate() {}

module.exports = { activate, deactivate };
