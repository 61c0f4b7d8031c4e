-- 020: user preference: show text labels in the UI; NULL means the default.

ALTER TABLE "user" ADD COLUMN "showUiLabels" BOOLEAN;
