-- 019: user preference: keyboard shortcuts on or off; NULL means the default.

ALTER TABLE "user" ADD COLUMN "areKeyboardShortcutsEnabled" BOOLEAN;
