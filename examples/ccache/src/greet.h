#ifndef GREET_H
#define GREET_H
const char *greeting(void);
unsigned long table_checksum(void);
#endif
